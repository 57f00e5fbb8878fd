package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progress redraws one status line on a terminal a few times a second.
// Its goroutine is owned by the run: stop ends it and waits for it.
type progress struct {
	w    io.Writer
	quit chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	mu   sync.Mutex
	line func() string
}

// startProgress draws on stderr only when it is a terminal (not when
// piped, redirected or captured by a test); otherwise it returns nil, on
// which every method does nothing.
func startProgress(stderr io.Writer) *progress {
	f, ok := stderr.(*os.File)
	if !ok || f != os.Stderr {
		return nil
	}
	fi, err := os.Stderr.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	p := &progress{w: stderr, quit: make(chan struct{})}
	p.wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.quit:
				fmt.Fprint(p.w, "\r\033[K")
				return
			case <-tick.C:
				p.mu.Lock()
				line := p.line
				p.mu.Unlock()
				if line != nil {
					fmt.Fprint(p.w, "\r"+line()+"\033[K")
				}
			}
		}
	})
	return p
}

// show sets what the line says from now on.
func (p *progress) show(line func() string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.line = line
	p.mu.Unlock()
}

// stop ends the line; it may be called more than once.
func (p *progress) stop() {
	if p == nil {
		return
	}
	p.once.Do(func() { close(p.quit) })
	p.wg.Wait()
}

// bar renders done out of total as a fixed-width bar.
func bar(label string, done, total int64, began time.Time) string {
	const width = 30
	if total < 1 {
		total = 1
	}
	done = min(done, total)
	n := int(done * width / total)
	rate := float64(done) / max(time.Since(began).Seconds(), 1e-9)
	return fmt.Sprintf("%-12s [%s%s] %d/%d %.0f/s", label, strings.Repeat("#", n), strings.Repeat(" ", width-n), done, total, rate)
}
