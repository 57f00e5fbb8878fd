package invariant_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga/internal/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }
