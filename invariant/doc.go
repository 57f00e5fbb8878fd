// Package invariant checks recorded saga histories against the guarantees
// the engine makes: event ids contiguous and one start and one end per
// saga, exactly one outcome per activity and compensation step,
// compensations last registered first, timers fired once and never early,
// acknowledged starts and signals recorded exactly once, and (optionally)
// a Postgres projection equal to the histories.
//
// It owns the checking, not the reading: histories come from the engine's
// history streams (Check, through stream.Store), or from any source the
// caller has (CheckHistories). Fault-injection runs call it once the
// engine is quiet; operators and tests may call it at any time, with the
// caveat that a saga still running may move on between two reads.
//
// A broken guarantee is a Violation in the Report, never an error: errors
// are kept for histories that could not be read at all. See
// docs/invariants.md for what each rule means and why it holds under
// crashes.
package invariant
