package stream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Marshal encodes v as msgpack. Struct fields are named by their json tags
// when they have no msgpack tag, so a JSON document and its msgpack
// translation decode into the same Go value.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.GetEncoder()
	defer msgpack.PutEncoder(enc)
	enc.Reset(&buf)
	enc.SetCustomStructTag("json")
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("%w: encode %T: %v", ErrCodec, v, err)
	}
	return buf.Bytes(), nil
}

// Unmarshal decodes untrusted msgpack into v. It first checks that data is
// exactly one well-formed value whose declared lengths fit in the bytes
// present: msgpack v5 sizes some allocations from the length headers
// alone, so a few crafted bytes could otherwise ask for gigabytes.
func Unmarshal(data []byte, v any) error {
	if err := CheckMsgpack(data); err != nil {
		return err
	}
	return decodeChecked(data, v)
}

// decodeChecked decodes msgpack that CheckMsgpack already accepted (as a
// whole or as part of a larger value).
func decodeChecked(data []byte, v any) error {
	dec := msgpack.GetDecoder()
	defer msgpack.PutDecoder(dec)
	dec.Reset(bytes.NewReader(data))
	dec.SetCustomStructTag("json")
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: decode %T: %v", ErrCodec, v, err)
	}
	return nil
}

// maxMsgpackDepth bounds nesting so that validation and decoding cannot
// exhaust the stack. Every reader applies it to every message.
const maxMsgpackDepth = 64

// MaxPayloadDepth bounds the nesting of a user value (an input, a result).
// A commit carries a value 4 levels below its root and a task 1 level, so a
// value within this bound keeps every message that carries it within what
// every reader decodes. Writers check it, so that nothing is appended that
// no node can read back.
const MaxPayloadDepth = 56

// CheckMsgpack reports whether data holds exactly one well-formed msgpack
// value. Every array and map must declare no more elements than there are
// bytes left (each element takes at least one byte), every string, binary
// and extension must fit, and nesting is at most 64 levels deep.
func CheckMsgpack(data []byte) error { return checkMsgpack(data, maxMsgpackDepth) }

func checkMsgpack(data []byte, maxDepth int) error {
	// Iterative, not recursive: a check runs deep in a handler's stack,
	// where recursion would grow (and copy) the goroutine's stack.
	// open[i] counts the values still to read in the i-th open container.
	var buf [16]int
	open := buf[:0]
	off := 0
	for {
		if len(open) > maxDepth {
			return fmt.Errorf("%w: more than %d levels", errTooDeep, maxDepth)
		}
		next, elems, err := checkHeader(data, off)
		if err != nil {
			return err
		}
		off = next
		if elems > 0 {
			// Each element takes at least one byte.
			if elems > len(data)-off {
				return fmt.Errorf("%w: msgpack container declares %d elements in %d bytes", ErrCodec, elems, len(data)-off)
			}
			open = append(open, elems)
			continue
		}
		// A value is complete: so are the containers it completes.
		for len(open) > 0 {
			open[len(open)-1]--
			if open[len(open)-1] > 0 {
				break
			}
			open = open[:len(open)-1]
		}
		if len(open) == 0 {
			break
		}
	}
	if off != len(data) {
		return fmt.Errorf("%w: %d trailing bytes after the msgpack value", ErrCodec, len(data)-off)
	}
	return nil
}

// CheckValue checks a user value against the limits every reader applies:
// at most maxSize bytes (0: no size limit) of well-formed msgpack nested at
// most MaxPayloadDepth levels. what names the value in the error. A value
// over a limit is ErrTooLarge, one that is not msgpack ErrCodec.
func CheckValue(what string, p Payload, maxSize int) error {
	if maxSize > 0 && len(p) > maxSize {
		return fmt.Errorf("%w: %s is %d bytes, the payload limit is %d", ErrTooLarge, what, len(p), maxSize)
	}
	if len(p) == 0 {
		return nil
	}
	if err := checkMsgpack(p, MaxPayloadDepth); errors.Is(err, errTooDeep) {
		return fmt.Errorf("%w: %s is nested deeper than %d levels", ErrTooLarge, what, MaxPayloadDepth)
	} else if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

var (
	errTruncated = fmt.Errorf("%w: truncated msgpack", ErrCodec)
	errTooDeep   = fmt.Errorf("%w: msgpack nested too deep", ErrCodec)
)

// checkHeader validates the header of the value at data[off] and returns
// the offset past it and the number of values it contains: a string,
// binary, extension or scalar is skipped whole (elems 0); an array or map
// is left open (elems: its elements, keys and values counted apart).
func checkHeader(data []byte, off int) (next, elems int, err error) {
	if off >= len(data) {
		return 0, 0, errTruncated
	}
	c := data[off]
	off++
	switch {
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		return off, 0, nil
	case c >= 0x80 && c <= 0x8f:
		return off, 2 * int(c&0x0f), nil
	case c >= 0x90 && c <= 0x9f:
		return off, int(c & 0x0f), nil
	case c >= 0xa0 && c <= 0xbf:
		next, err = skip(data, off, int(c&0x1f))
		return next, 0, err
	}
	switch c {
	case 0xc4, 0xd9, 0xc5, 0xda, 0xc6, 0xdb: // bin8/16/32, str8/16/32: length, then bytes
		width := 1
		switch c {
		case 0xc5, 0xda:
			width = 2
		case 0xc6, 0xdb:
			width = 4
		}
		n, off, err := readLen(data, off, width)
		if err != nil {
			return 0, 0, err
		}
		next, err = skip(data, off, n)
		return next, 0, err
	case 0xc7, 0xc8, 0xc9: // ext8/16/32: length, type byte, data
		width := 1 << (c - 0xc7)
		n, off, err := readLen(data, off, width)
		if err != nil {
			return 0, 0, err
		}
		next, err = skip(data, off, n+1)
		return next, 0, err
	case 0xca, 0xce, 0xd2: // float32, uint32, int32
		next, err = skip(data, off, 4)
	case 0xcb, 0xcf, 0xd3: // float64, uint64, int64
		next, err = skip(data, off, 8)
	case 0xcc, 0xd0: // uint8, int8
		next, err = skip(data, off, 1)
	case 0xcd, 0xd1: // uint16, int16
		next, err = skip(data, off, 2)
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16 plus the type byte
		next, err = skip(data, off, 1+(1<<(c-0xd4)))
	case 0xdc, 0xdd: // array16, array32
		width := 2
		if c == 0xdd {
			width = 4
		}
		n, off, err := readLen(data, off, width)
		return off, n, err
	case 0xde, 0xdf: // map16, map32
		width := 2
		if c == 0xdf {
			width = 4
		}
		n, off, err := readLen(data, off, width)
		return off, 2 * n, err
	default:
		return 0, 0, fmt.Errorf("%w: invalid msgpack type byte 0x%02x", ErrCodec, c)
	}
	return next, 0, err
}

func readLen(data []byte, off, width int) (int, int, error) {
	if len(data)-off < width {
		return 0, 0, errTruncated
	}
	n := 0
	for i := range width {
		n = n<<8 | int(data[off+i])
	}
	return n, off + width, nil
}

func skip(data []byte, off, n int) (int, error) {
	if n < 0 || n > len(data)-off {
		return 0, errTruncated
	}
	return off + n, nil
}

// Payload is a user value (a workflow input or output, an activity input or
// result) as msgpack bytes. It is kept opaque in history and decoded into
// the user's type only by the code that knows that type.
type Payload []byte

// EncodeMsgpack writes the payload as the raw value it already is.
func (p Payload) EncodeMsgpack(enc *msgpack.Encoder) error {
	if len(p) == 0 {
		return enc.EncodeNil()
	}
	return enc.Encode(msgpack.RawMessage(p))
}

// DecodeMsgpack captures the next value without decoding it.
func (p *Payload) DecodeMsgpack(dec *msgpack.Decoder) error {
	raw, err := dec.DecodeRaw()
	if err != nil {
		return err
	}
	if len(raw) == 1 && raw[0] == 0xc0 {
		*p = nil
		return nil
	}
	*p = Payload(bytes.Clone(raw))
	return nil
}

// MarshalJSON renders the payload as the JSON of its generic decoding, so
// that histories read well in the CLI and over the API.
func (p Payload) MarshalJSON() ([]byte, error) {
	v, err := p.Generic()
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads a payload from the JSON of its value.
func (p *Payload) UnmarshalJSON(doc []byte) error {
	if string(doc) == "null" {
		*p = nil
		return nil
	}
	v, err := PayloadFromJSON(doc)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Generic decodes the payload into JSON-compatible Go values (maps with
// string keys, slices, numbers, strings, booleans, nil).
func (p Payload) Generic() (any, error) {
	if len(p) == 0 {
		return nil, nil
	}
	var v any
	if err := Unmarshal(p, &v); err != nil {
		return nil, err
	}
	return jsonCompatible(v), nil
}

func jsonCompatible(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonCompatible(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonCompatible(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = jsonCompatible(e)
		}
		return x
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	}
	return v
}

// PayloadFromJSON translates a JSON document into a msgpack payload without
// knowing its Go type. Integral numbers become integers so that they decode
// into integer fields.
func PayloadFromJSON(doc []byte) (Payload, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: input is not JSON: %v", ErrCodec, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: input holds more than one JSON value", ErrCodec)
	}
	b, err := Marshal(fromJSONNumbers(v))
	if err != nil {
		return nil, err
	}
	return Payload(b), nil
}

func fromJSONNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = fromJSONNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = fromJSONNumbers(e)
		}
	}
	return v
}
