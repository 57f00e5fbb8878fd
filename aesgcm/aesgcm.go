// Package aesgcm is a payload codec (stream.PayloadCodec) that seals user
// payloads with AES-256-GCM under a key read from a file, so that the
// histories, tasks and buckets in JetStream hold no plaintext of users'
// data.
//
// A sealed payload is: one version byte, the 8-byte id of its key (the
// first 8 bytes of the key's SHA-256), a random 12-byte nonce, and the
// ciphertext with its 16-byte tag; the version and key id are
// authenticated as additional data. Keys rotate: a codec seals with its
// current key and opens with it or any previous key it is given.
package aesgcm

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Name is the codec's name in the fleet's settings.
const Name = "aes-256-gcm"

const (
	version   = 1
	keyIDLen  = 8
	headerLen = 1 + keyIDLen
	keyLen    = 32
)

// Errors of the codec.
var (
	ErrKey     = errors.New("aes-256-gcm key")
	ErrUnknown = errors.New("sealed with a key this codec does not hold")
	ErrSealed  = errors.New("sealed payload is malformed or was tampered with")
)

// Codec seals with its current key and opens with any key it holds. It is
// safe for concurrent use.
type Codec struct {
	current string // key id
	aeads   map[string]cipher.AEAD
	ids     []string
}

// New returns a codec sealing with key and opening with key or any of
// previous. Keys are 32 bytes.
func New(key []byte, previous ...[]byte) (*Codec, error) {
	c := &Codec{aeads: map[string]cipher.AEAD{}}
	for i, k := range append([][]byte{key}, previous...) {
		if len(k) != keyLen {
			return nil, fmt.Errorf("%w: %d bytes, want %d", ErrKey, len(k), keyLen)
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKey, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKey, err)
		}
		sum := sha256.Sum256(k)
		id := hex.EncodeToString(sum[:keyIDLen])
		if i == 0 {
			c.current = id
		}
		if _, dup := c.aeads[id]; !dup {
			c.aeads[id] = aead
			c.ids = append(c.ids, id)
		}
	}
	return c, nil
}

// FromFiles reads the current key from path and previous keys from the
// other paths. A key file holds the 32 bytes raw, or as 64 hex digits, or
// as base64; surrounding white space is ignored. Generate one with
// "openssl rand -hex 32 > payload.key" (mode 0600).
func FromFiles(path string, previous ...string) (*Codec, error) {
	var keys [][]byte
	for _, p := range append([]string{path}, previous...) {
		k, err := readKey(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return New(keys[0], keys[1:]...)
}

func readKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	if len(b) == keyLen {
		return b, nil
	}
	text := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(text); err == nil && len(k) == keyLen {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(text); err == nil && len(k) == keyLen {
		return k, nil
	}
	return nil, fmt.Errorf("%w: %s holds neither 32 raw bytes, 64 hex digits nor the base64 of 32 bytes", ErrKey, path)
}

// Name names the codec.
func (c *Codec) Name() string { return Name }

// KeyID is the id of the key that seals.
func (c *Codec) KeyID() string { return c.current }

// KeyIDs are the ids of every key that opens, the current one first.
func (c *Codec) KeyIDs() []string { return append([]string(nil), c.ids...) }

// Seal encrypts plain under the current key with a fresh random nonce.
func (c *Codec) Seal(plain []byte) ([]byte, error) {
	aead := c.aeads[c.current]
	out := make([]byte, headerLen, headerLen+aead.NonceSize()+len(plain)+aead.Overhead())
	out[0] = version
	id, _ := hex.DecodeString(c.current)
	copy(out[1:], id)
	nonce := out[headerLen : headerLen+aead.NonceSize()]
	out = out[:headerLen+aead.NonceSize()]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("aes-256-gcm: nonce: %w", err)
	}
	return aead.Seal(out, nonce, plain, out[:headerLen]), nil
}

// CanOpen reports whether sealed names a key the codec holds.
func (c *Codec) CanOpen(sealed []byte) bool {
	if len(sealed) < headerLen || sealed[0] != version {
		return false
	}
	_, ok := c.aeads[hex.EncodeToString(sealed[1:headerLen])]
	return ok
}

// Open decrypts what Seal produced, under whichever key sealed it.
func (c *Codec) Open(sealed []byte) ([]byte, error) {
	if len(sealed) < headerLen || sealed[0] != version {
		return nil, ErrSealed
	}
	id := hex.EncodeToString(sealed[1:headerLen])
	aead, ok := c.aeads[id]
	if !ok {
		return nil, fmt.Errorf("%w: key %s", ErrUnknown, id)
	}
	rest := sealed[headerLen:]
	if len(rest) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrSealed
	}
	plain, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], sealed[:headerLen])
	if err != nil {
		return nil, ErrSealed
	}
	return plain, nil
}
