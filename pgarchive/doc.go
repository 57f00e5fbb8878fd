// Package pgarchive owns the optional Postgres projection and archive of
// saga histories: the schema and its migrations, the projector that
// writes a row per saga, commit and event as the engine appends them, the
// queries behind list and search, and the fallback reads of histories
// JetStream no longer holds. The engine never needs it: sagas run the
// same with Postgres down or absent.
package pgarchive
