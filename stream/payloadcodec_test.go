package stream

import (
	"bytes"
	"testing"
)

// padCodec seals by prefixing the value with pad bytes, so that the sealed
// length can be chosen: msgpack wraps lengths 1, 2, 4, 8 and 16 as fixext
// and others as ext 8, 16 or 32.
type padCodec struct{ pad int }

func (p padCodec) Name() string     { return "pad" }
func (p padCodec) KeyID() string    { return "k" }
func (p padCodec) KeyIDs() []string { return []string{"k"} }
func (p padCodec) Seal(b []byte) ([]byte, error) {
	return append(bytes.Repeat([]byte{0}, p.pad), b...), nil
}
func (p padCodec) Open(b []byte) ([]byte, error) { return b[p.pad:], nil }
func (p padCodec) CanOpen([]byte) bool           { return true }

func TestSealedPayloadOfEveryExtLength(t *testing.T) {
	plain, _ := Marshal(true) // one byte
	for _, total := range []int{1, 2, 4, 8, 16, 17, 255, 256, 70000} {
		c := padCodec{pad: total - len(plain)}
		sealed, err := SealPayload(c, plain)
		if err != nil {
			t.Fatal(err)
		}
		if !IsSealed(sealed) {
			t.Errorf("%d sealed bytes (header 0x%02x) not recognised as sealed", total, sealed[0])
			continue
		}
		if err := CheckMsgpack(sealed); err != nil {
			t.Errorf("%d sealed bytes: %v", total, err)
		}
		if got, err := OpenPayload(c, sealed); err != nil || !bytes.Equal(got, plain) {
			t.Errorf("%d sealed bytes open to %x, %v", total, got, err)
		}
	}
	if IsSealed(Payload{0xd4, 0x01, 0x00}) {
		t.Error("an extension of another type is taken for a sealed payload")
	}
}
