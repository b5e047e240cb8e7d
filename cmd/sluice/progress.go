package main

import (
	"fmt"
	"os"
	"time"
)

// progress returns a callback that draws a one-line progress bar on stderr
// when stderr is a terminal; nil otherwise (logs and pipes stay clean).
func (a *app) progress(label string) func(done, total int64) {
	f, ok := a.stderr.(*os.File)
	if !ok {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	start := time.Now()
	a.drawn = true
	return func(done, total int64) {
		if total <= 0 {
			// Unknown total (a read): a counter.
			rate := float64(done) / max(time.Since(start).Seconds(), 0.001)
			fmt.Fprintf(f, "\r%s: %d records, %.0f/s ", label, done, rate)
			return
		}
		const width = 30
		n := int(float64(width) * float64(done) / float64(total))
		rate := float64(done) / max(time.Since(start).Seconds(), 0.001)
		bar := make([]byte, width)
		for i := range bar {
			if i < n {
				bar[i] = '#'
			} else {
				bar[i] = '.'
			}
		}
		fmt.Fprintf(f, "\r%s [%s] %d/%d records, %.0f/s ", label, bar, done, total, rate)
	}
}

// endProgress finishes a progress line, if one was drawn.
func (a *app) endProgress() {
	if a.drawn {
		fmt.Fprintln(a.stderr)
		a.drawn = false
	}
}
