// Package protocoltest drives a saga-node binary with nothing but a NATS
// client, following docs/protocol.md: it imports no package of this
// module, so that a client in any language can do what it does. It holds
// tests only.
package protocoltest
