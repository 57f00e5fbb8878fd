package aesgcm_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/jetsaga/saga/aesgcm"
	"github.com/jetsaga/saga/stream"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func TestSealOpensOnlyWithTheKeyAndUntampered(t *testing.T) {
	c, err := aesgcm.New(key(1))
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("personal data")
	a, err := c.Seal(plain)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.Seal(plain)
	if bytes.Equal(a, b) {
		t.Error("two seals of one value are equal: the nonce is not fresh")
	}
	if bytes.Contains(a, plain) {
		t.Error("sealed bytes hold the plaintext")
	}
	if got, err := c.Open(a); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %q, %v", got, err)
	}
	tampered := bytes.Clone(a)
	tampered[len(tampered)-1] ^= 1
	if _, err := c.Open(tampered); !errors.Is(err, aesgcm.ErrSealed) {
		t.Errorf("tampered ciphertext: %v", err)
	}
	other, _ := aesgcm.New(key(2))
	if _, err := other.Open(a); !errors.Is(err, aesgcm.ErrUnknown) {
		t.Errorf("another key: %v", err)
	}
	for _, short := range [][]byte{nil, {1}, a[:20]} {
		if _, err := c.Open(short); !errors.Is(err, aesgcm.ErrSealed) {
			t.Errorf("open %d bytes: %v", len(short), err)
		}
	}
}

func TestRotatedKeyStillOpensWhatItSealed(t *testing.T) {
	old, _ := aesgcm.New(key(1))
	sealed, _ := old.Seal([]byte("v"))
	rotated, err := aesgcm.New(key(2), key(1))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := rotated.Open(sealed); err != nil || string(got) != "v" {
		t.Fatalf("open with the previous key: %q, %v", got, err)
	}
	if rotated.KeyID() == old.KeyID() || len(rotated.KeyIDs()) != 2 || rotated.KeyIDs()[1] != old.KeyID() {
		t.Errorf("key ids: current %s, all %v; old %s", rotated.KeyID(), rotated.KeyIDs(), old.KeyID())
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	k := key(7)
	files := map[string][]byte{
		"raw":    k,
		"hex":    []byte(hex.EncodeToString(k) + "\n"),
		"base64": []byte(base64.StdEncoding.EncodeToString(k) + "\n"),
	}
	want, _ := aesgcm.New(k)
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := aesgcm.FromFiles(p)
		if err != nil || c.KeyID() != want.KeyID() {
			t.Errorf("%s key file: %v", name, err)
		}
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("abcd"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{short, filepath.Join(dir, "missing")} {
		if _, err := aesgcm.FromFiles(p); !errors.Is(err, aesgcm.ErrKey) {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func TestSealedPayloadStaysOneMsgpackValue(t *testing.T) {
	c, _ := aesgcm.New(key(3))
	plain, _ := stream.Marshal(map[string]any{"name": "Ada"})
	sealed, err := stream.SealPayload(c, plain)
	if err != nil {
		t.Fatal(err)
	}
	if !stream.IsSealed(sealed) || stream.IsSealed(plain) {
		t.Fatal("IsSealed cannot tell sealed from plain")
	}
	if err := stream.CheckMsgpack(sealed); err != nil {
		t.Fatalf("a sealed payload is not well-formed msgpack: %v", err)
	}
	again, _ := stream.SealPayload(c, sealed)
	if !bytes.Equal(again, sealed) {
		t.Error("sealing twice wraps twice")
	}
	opened, err := stream.OpenPayload(c, sealed)
	if err != nil || !bytes.Equal(opened, plain) {
		t.Fatalf("open: %v", err)
	}
	if p, err := stream.OpenPayload(nil, plain); err != nil || !bytes.Equal(p, plain) {
		t.Errorf("a plain payload without a codec: %v", err)
	}
	if _, err := stream.OpenPayload(nil, sealed); !errors.Is(err, stream.ErrPayloadCodec) {
		t.Errorf("a sealed payload without a codec: %v", err)
	}
	g, err := stream.Payload(sealed).Generic()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.(*stream.SealedPayload); !ok {
		t.Errorf("generic decoding gives %T", g)
	}
}
