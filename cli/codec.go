package cli

import (
	"flag"
	"fmt"
	"strings"

	"github.com/jetsaga/saga/aesgcm"
	"github.com/jetsaga/saga/stream"
)

// codecFlags choose the payload codec of a command that reads or writes
// user payloads.
type codecFlags struct {
	key      string
	previous string
}

func (c *codecFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.key, "payload-key", "", "file of the AES-256-GCM key that seals user payloads (inputs, results, signals) in JetStream; every node of the fleet needs it")
	fs.StringVar(&c.previous, "payload-key-previous", "", "comma-separated files of earlier keys, still needed to open what they sealed")
}

// codec returns the codec the flags name, or nil for none.
func (c *codecFlags) codec() (stream.PayloadCodec, error) {
	if c.key == "" {
		if c.previous != "" {
			return nil, fmt.Errorf("%w: --payload-key-previous needs --payload-key", errUsage)
		}
		return nil, nil
	}
	var previous []string
	for _, p := range strings.Split(c.previous, ",") {
		if p = strings.TrimSpace(p); p != "" {
			previous = append(previous, p)
		}
	}
	codec, err := aesgcm.FromFiles(c.key, previous...)
	if err != nil {
		return nil, fmt.Errorf("%w: --payload-key: %v", errUsage, err)
	}
	return codec, nil
}
