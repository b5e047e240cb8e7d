package changelog

import (
	"slices"
	"testing"
)

func TestOverlapped(t *testing.T) {
	seg := func(name string, first, last, fence int64) segment {
		return segment{name: name, first: first, last: last, fence: fence}
	}
	tests := []struct {
		name string
		segs []segment
		want []string // orphans, sorted
	}{
		{"committed chain, adjacent", []segment{
			seg("a", 1, 10, 1), seg("b", 11, 20, 2), seg("c", 21, 30, 2), seg("d", 31, 40, 5),
		}, nil},
		{"lower fence inside", []segment{
			seg("a", 1, 100, 3), seg("x", 40, 60, 2),
		}, []string{"x"}},
		{"lower fence starts later and runs past", []segment{
			seg("a", 9_990, 10_500, 5), seg("x", 10_000, 10_300, 4), seg("b", 10_501, 10_600, 6),
		}, []string{"x"}},
		{"lower fence starts first", []segment{
			seg("x", 5, 30, 2), seg("a", 11, 20, 3), seg("b", 21, 25, 3),
		}, []string{"x"}},
		{"touching by one seq", []segment{
			seg("x", 1, 11, 2), seg("a", 11, 20, 3),
		}, []string{"x"}},
		{"orphans of two stale writers", []segment{
			seg("a", 1, 100, 7), seg("x", 10, 50, 5), seg("y", 40, 90, 6), seg("z", 95, 120, 4), seg("b", 101, 110, 7),
		}, []string{"x", "y", "z"}},
		{"unknown fence is neither removed nor proof", []segment{
			seg("old", 1, 100, 0), seg("x", 10, 20, 1), seg("a", 50, 60, 2), seg("y", 55, 58, 1),
		}, []string{"y"}},
		{"equal fences are left alone", []segment{
			seg("a", 1, 10, 3), seg("b", 5, 15, 3),
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for name, w := range overlapped(tc.segs) {
				var o segment
				for _, s := range tc.segs {
					if s.name == name {
						o = s
					}
				}
				if w.fence <= o.fence || w.first > o.last || o.first > w.last {
					t.Errorf("%s (%d..%d fence %d) given %s (%d..%d fence %d) as proof", o.name, o.first, o.last, o.fence, w.name, w.first, w.last, w.fence)
				}
				got = append(got, name)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("orphans %v, want %v", got, tc.want)
			}
		})
	}
}
