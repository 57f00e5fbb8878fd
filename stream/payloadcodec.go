package stream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"
)

// PayloadCodec seals user payloads (workflow inputs and outputs, activity
// inputs and results, signal values, side-effect values, heartbeat
// details) before they are written to JetStream, and opens them where user
// code reads them, like Temporal's data converter. The engine never needs
// a payload's content, so the histories, tasks and buckets then hold no
// plaintext of users' data.
//
// Seal must not be deterministic in a way that leaks (use a fresh nonce per
// call): replay never compares payloads. Open must fail, not guess, on
// bytes it did not seal.
type PayloadCodec interface {
	// Name identifies the codec in the fleet's settings, e.g. "aes-256-gcm".
	Name() string
	// KeyID names the key Seal uses now; KeyIDs every key Open can use.
	KeyID() string
	KeyIDs() []string
	Seal(plain []byte) ([]byte, error)
	Open(sealed []byte) ([]byte, error)
	// CanOpen reports, without opening it, whether the codec holds the
	// key that sealed these bytes: a node that cannot open a saga's
	// values leaves it to one that can, rather than failing it.
	CanOpen(sealed []byte) bool
}

// CanOpen reports whether c can open p: p is plain, or sealed with a key c
// holds.
func CanOpen(c PayloadCodec, p Payload) bool {
	data, ok := sealedData(p)
	return !ok || (c != nil && c.CanOpen(data))
}

// WorkflowPayloads are the user values of an event that workflow code
// opens: a start's input (and the signals a run passes on), an activity's
// result, a signal's value, a side effect's value.
func WorkflowPayloads(e Event) []Payload {
	switch a := e.Attrs.(type) {
	case *WorkflowExecutionStartedAttrs:
		if a.Continued == nil {
			return []Payload{a.Input}
		}
		out := []Payload{a.Input}
		for _, s := range a.Continued.Signals {
			out = append(out, s.Input)
		}
		return out
	case *ActivityTaskCompletedAttrs:
		return []Payload{a.Result}
	case *SignalReceivedAttrs:
		return []Payload{a.Input}
	case *MarkerRecordedAttrs:
		return []Payload{a.Data}
	}
	return nil
}

// ErrPayloadCodec marks a payload that cannot be sealed or opened: a
// process without the codec met a sealed payload, or the codec refused it.
var ErrPayloadCodec = errors.New("payload codec")

// SealedExtID is the msgpack extension type of a sealed payload. A sealed
// payload stays one well-formed msgpack value, so that every size, depth
// and shape check applies to it unchanged and a history mixing sealed and
// plain payloads (written before the codec was turned on) reads.
const SealedExtID int8 = 0x4a

// SealedPayload is the content of a sealed payload. Decoded generically
// (describe, history, the projection) it renders as {"sealed": base64}.
type SealedPayload []byte

func init() { msgpack.RegisterExt(SealedExtID, (*SealedPayload)(nil)) }

// MarshalMsgpack and UnmarshalMsgpack carry the sealed bytes as the
// extension's data.
func (s *SealedPayload) MarshalMsgpack() ([]byte, error) { return *s, nil }

// UnmarshalMsgpack keeps a copy of the extension's data.
func (s *SealedPayload) UnmarshalMsgpack(b []byte) error {
	*s = bytes.Clone(b)
	return nil
}

// MarshalJSON renders the sealed bytes without opening them.
func (s SealedPayload) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"sealed": base64.StdEncoding.EncodeToString(s)})
}

// sealedData returns the sealed bytes of p when p is one sealed value.
func sealedData(p Payload) ([]byte, bool) {
	if len(p) == 0 {
		return nil, false
	}
	var data []byte
	switch c := p[0]; c {
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16
		if len(p) < 2 || len(p)-2 != 1<<(c-0xd4) || int8(p[1]) != SealedExtID {
			return nil, false
		}
		data = p[2:]
	case 0xc7: // ext 8
		if len(p) < 3 || int(p[1]) != len(p)-3 || int8(p[2]) != SealedExtID {
			return nil, false
		}
		data = p[3:]
	case 0xc8: // ext 16
		if len(p) < 4 || int(p[1])<<8|int(p[2]) != len(p)-4 || int8(p[3]) != SealedExtID {
			return nil, false
		}
		data = p[4:]
	case 0xc9: // ext 32
		if len(p) < 6 || int(p[1])<<24|int(p[2])<<16|int(p[3])<<8|int(p[4]) != len(p)-6 || int8(p[5]) != SealedExtID {
			return nil, false
		}
		data = p[6:]
	default:
		return nil, false
	}
	return data, true
}

// IsSealed reports whether p is a sealed payload.
func IsSealed(p Payload) bool {
	_, ok := sealedData(p)
	return ok
}

// SealPayload seals a plain payload with c. Without a codec, or for an
// empty or already sealed payload, it returns p unchanged. The plain
// value's nesting is checked first: once sealed, no writer's check could
// see it, and the reader's would fail the saga.
func SealPayload(c PayloadCodec, p Payload) (Payload, error) {
	if c == nil || len(p) == 0 || IsSealed(p) {
		return p, nil
	}
	if err := CheckValue("payload", p, 0); err != nil {
		return nil, err
	}
	sealed, err := c.Seal(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: seal: %v", ErrPayloadCodec, c.Name(), err)
	}
	s := SealedPayload(sealed)
	b, err := msgpack.Marshal(&s)
	if err != nil {
		return nil, fmt.Errorf("%w: wrap sealed payload: %v", ErrPayloadCodec, err)
	}
	return b, nil
}

// OpenPayload returns the plain payload of p: p itself when it is not
// sealed (written before the codec was turned on, or published as JSON),
// else what c opens. A sealed payload without a codec is ErrPayloadCodec.
func OpenPayload(c PayloadCodec, p Payload) (Payload, error) {
	data, ok := sealedData(p)
	if !ok {
		return p, nil
	}
	if c == nil {
		return nil, fmt.Errorf("%w: the payload is sealed and this process has no payload codec (saga-node --payload-key)", ErrPayloadCodec)
	}
	plain, err := c.Open(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: open: %v", ErrPayloadCodec, c.Name(), err)
	}
	if err := CheckMsgpack(plain); err != nil {
		return nil, fmt.Errorf("%w: opened payload: %v", ErrPayloadCodec, err)
	}
	return plain, nil
}

// Metadata keys of the first history stream that record the fleet's codec:
// its name, and every key id any node has sealed with.
const (
	metaCodec  = "saga_payload_codec"
	metaKeyIDs = "saga_payload_keys"
)

// ErrCodecMismatch is a node whose payload codec does not fit the fleet's.
var ErrCodecMismatch = errors.New("payload codec does not fit the fleet's")

// CheckPayloadCodec compares a node's codec with the one the fleet
// records, and records it: the first node with a codec turns it on for
// good. A node without one, once payloads are sealed, or one that cannot
// open a key the fleet has sealed with, is refused: it would fail every
// saga it touched. Only the codec's name and key ids are recorded, never
// a key.
func CheckPayloadCodec(ctx context.Context, js jetstream.JetStream, cfg Config, c PayloadCodec) error {
	name := cfg.HistoryStream(0)
	for range 5 {
		sc, err := ensuredStreamConfig(ctx, js, name)
		if err != nil {
			return fmt.Errorf("payload codec: read %s: %w", name, err)
		}
		recorded, keys := recordedCodec(sc.Metadata)
		if c == nil {
			if recorded != "" {
				return fmt.Errorf("%w: the fleet seals payloads with %s (stream %s); start this node with its key (--payload-key)", ErrCodecMismatch, recorded, name)
			}
			return nil
		}
		if recorded != "" && recorded != c.Name() {
			return fmt.Errorf("%w: the fleet seals payloads with %s, this node with %s", ErrCodecMismatch, recorded, c.Name())
		}
		held := c.KeyIDs()
		for _, k := range keys {
			if !slices.Contains(held, k) {
				return fmt.Errorf("%w: payloads were sealed with key %s, which this node does not hold (give it as a previous key)", ErrCodecMismatch, k)
			}
		}
		if recorded == c.Name() && slices.Contains(keys, c.KeyID()) {
			return nil
		}
		meta := map[string]string{}
		for k, v := range sc.Metadata {
			meta[k] = v
		}
		meta[metaCodec] = c.Name()
		meta[metaKeyIDs] = strings.Join(append(keys, c.KeyID()), ",")
		sc.Metadata = meta
		// An update has no expected revision: two nodes adding keys at once
		// may overwrite each other. Reading back and checking again repairs
		// that.
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		_, err = js.UpdateStream(attemptCtx, sc)
		cancel()
		if err != nil {
			return fmt.Errorf("payload codec: record it on %s: %w", name, mapError(err))
		}
	}
	return fmt.Errorf("%w: the codec recorded on %s keeps changing", ErrCodecMismatch, name)
}

// FleetSettings are the settings an engine records on its first history
// stream, which every node and client must share.
type FleetSettings struct {
	// Codec is the payload codec's name, empty when payloads are not
	// sealed, and KeyIDs the ids of the keys it sealed with
	// (CheckPayloadCodec).
	Codec  string
	KeyIDs []string
	// HistoryShards is the engine's shard count; 0 when none is recorded
	// (see checkShards).
	HistoryShards int
	// HistoryLimits are the fleet's history limits (the defaults, which
	// nodes then follow, when none are recorded); HistoryLimitsKnown is
	// false when the record does not parse.
	HistoryLimits      HistoryLimits
	HistoryLimitsKnown bool
}

// Fleet returns the settings the engine records; the zero value when it
// has no streams yet.
func Fleet(ctx context.Context, js jetstream.JetStream, cfg Config) (FleetSettings, error) {
	s, err := js.Stream(ctx, cfg.HistoryStream(0))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return FleetSettings{}, nil
	}
	if err != nil {
		return FleetSettings{}, mapError(err)
	}
	meta := s.CachedInfo().Config.Metadata
	var f FleetSettings
	f.Codec, f.KeyIDs = recordedCodec(meta)
	f.HistoryShards, _ = strconv.Atoi(meta[metaHistoryShards])
	l, recorded, err := recordedHistoryLimits(meta)
	switch {
	case err != nil:
	case recorded:
		f.HistoryLimits, f.HistoryLimitsKnown = l, true
	default:
		f.HistoryLimits, f.HistoryLimitsKnown = DefaultHistoryLimits, true
	}
	return f, nil
}

// recordedCodec reads the codec a stream's metadata records.
func recordedCodec(meta map[string]string) (name string, keyIDs []string) {
	if v := meta[metaKeyIDs]; v != "" {
		keyIDs = strings.Split(v, ",")
	}
	return meta[metaCodec], keyIDs
}
