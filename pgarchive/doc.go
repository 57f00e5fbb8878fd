// Package pgarchive will own the optional Postgres projection and archive
// of saga histories (list and search, retention). Nothing is built here
// yet; the engine never needs Postgres to run.
package pgarchive
