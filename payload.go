package saga

import (
	"context"

	"github.com/jetsaga/saga/stream"
)

// PayloadCodec seals user payloads before they reach JetStream and opens
// them where code reads them; see stream.PayloadCodec. Package aesgcm has
// one. Nodes (worker.Options.Codec) and clients (ClientOptions.Codec) of
// one engine must hold the same keys.
type PayloadCodec = stream.PayloadCodec

// encodeValue encodes v as a payload, sealed when c is set.
func encodeValue(c PayloadCodec, v any) (stream.Payload, error) {
	b, err := stream.Marshal(v)
	if err != nil {
		return nil, err
	}
	return stream.SealPayload(c, b)
}

// decodeValue decodes a payload, opening it first when it is sealed.
func decodeValue(c PayloadCodec, p stream.Payload, out any) error {
	plain, err := stream.OpenPayload(c, p)
	if err != nil {
		return err
	}
	return stream.Unmarshal(plain, out)
}

type codecKey struct{}

// WithPayloadCodec gives the activities run with ctx the codec of their
// inputs, results and heartbeat details. Nodes call it; an activity run
// by a test without it reads and writes plain payloads.
func WithPayloadCodec(ctx context.Context, c PayloadCodec) context.Context {
	if c == nil {
		return ctx
	}
	return context.WithValue(ctx, codecKey{}, c)
}

func codecFrom(ctx context.Context) PayloadCodec {
	c, _ := ctx.Value(codecKey{}).(PayloadCodec)
	return c
}
