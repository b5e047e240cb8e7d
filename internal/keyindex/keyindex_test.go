package keyindex_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/keyindex"
	"github.com/sluicehq/sluice/internal/testenv"
)

func TestIndexIsTheFoldedLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	lg := changelog.New(st, "p", changelog.Options{})
	want := map[string]string{}
	add := func(n, from int) int64 {
		s, _ := lg.LoadState(ctx)
		a, err := lg.NewAppender(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		for i := from; i < from+n; i++ {
			k := fmt.Sprint(i % 97)
			r := &changelog.Record{Op: changelog.OpUpsert, Key: k, Fields: json.RawMessage(fmt.Sprintf(`{"v":%d}`, i))}
			if i%5 == 0 {
				r = &changelog.Record{Op: changelog.OpDelete, Key: k}
				delete(want, k)
			} else {
				want[k] = string(r.Fields)
			}
			if err := a.Add(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Commit(ctx, nil); err != nil {
			t.Fatal(err)
		}
		return a.Head().Seq
	}
	check := func(ix *keyindex.Index) {
		t.Helper()
		if ix.Len() != len(want) {
			t.Fatalf("index has %d keys, want %d", ix.Len(), len(want))
		}
		for k, f := range want {
			if h, ok := ix.Lookup(k); !ok || h != keyindex.HashFields([]byte(f)) {
				t.Fatalf("key %s: %x %v", k, h, ok)
			}
		}
		if _, ok := ix.Lookup("nope"); ok {
			t.Fatal("lookup of a missing key succeeded")
		}
	}
	head := add(500, 0)
	ix, err := keyindex.CatchUp(ctx, lg, nil, head)
	if err != nil {
		t.Fatal(err)
	}
	check(ix)
	if err := keyindex.Save(ctx, st, "p", ix); err != nil {
		t.Fatal(err)
	}
	head = add(300, 500)
	loaded, err := keyindex.Load(ctx, st, "p", head)
	if err != nil || loaded.Seq != 500 {
		t.Fatalf("load = seq %d, %v", loaded.Seq, err)
	}
	ix, err = keyindex.CatchUp(ctx, lg, loaded, head)
	if err != nil {
		t.Fatal(err)
	}
	check(ix)
	// An index newer than asked for is not used.
	if old, err := keyindex.Load(ctx, st, "p", 499); err != nil || old.Seq != 0 {
		t.Fatalf("load below the stored seq = %d, %v; want an empty index", old.Seq, err)
	}
	// A corrupt index is a cache miss, never an error.
	if _, err := st.Create(ctx, fmt.Sprintf("p/index/keys/%020d.kix.gz", 700), []byte("garbage"), nil); err != nil {
		t.Fatal(err)
	}
	if bad, err := keyindex.Load(ctx, st, "p", head); err != nil || bad.Seq != 0 {
		t.Fatalf("corrupt index = seq %d, %v; want empty", bad.Seq, err)
	}
}

func TestSeenChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	n1, err := keyindex.SaveSeen(ctx, st, "p", 10, 1, 1, "", []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	// Defect 1 (issue 11): a second commit at the same head (nothing was
	// logged in between) must get a blob of its own.
	n2, err := keyindex.SaveSeen(ctx, st, "p", 10, 1, 2, n1, []string{"c"})
	if err != nil {
		t.Fatal(err)
	}
	if n2 == n1 {
		t.Fatalf("two commits of one pass share the blob %s", n1)
	}
	// Never another interval's blob, even under the same name.
	if _, err := keyindex.SaveSeen(ctx, st, "p", 10, 1, 2, n1, []string{"d"}); err == nil {
		t.Fatal("a second blob under an existing name was accepted")
	}
	// An orphan from a crashed pass, never committed: not in the chain.
	if _, err := keyindex.SaveSeen(ctx, st, "p", 10, 1, 3, n2, []string{"zzz"}); err != nil {
		t.Fatal(err)
	}
	seen, err := keyindex.LoadSeen(ctx, st, n2)
	if err != nil || len(seen) != 3 {
		t.Fatalf("seen = %v, %v", seen, err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if _, ok := seen[k]; !ok {
			t.Fatalf("%s missing", k)
		}
	}
	keyindex.DropSeen(ctx, st, "p", 10, 1)
	if _, err := keyindex.LoadSeen(ctx, st, n2); err == nil {
		t.Fatal("dropped chain still readable")
	}
}

// Defect 5 (issue 11): a reader that completed a round and deletes its
// chain late, after a newer reader started the next round (or the same
// round start again, when the round logged nothing), must leave the newer
// chain alone, or every later pass fails in LoadSeen.
func TestStaleDropKeepsNewerChains(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name               string
		round, fence       int64
		newRound, newFence int64
	}{
		{"next round starts later", 10, 3, 50, 4},
		{"next round starts at the same head", 10, 3, 10, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := testenv.Store(t)
			// Leftovers of an older, abandoned round, and of this round's
			// earlier passes.
			old, _ := keyindex.SaveSeen(ctx, st, "p", 2, 1, 1, "", []string{"x"})
			mine, _ := keyindex.SaveSeen(ctx, st, "p", tc.round, tc.fence-1, 1, "", []string{"a"})
			mine, _ = keyindex.SaveSeen(ctx, st, "p", tc.round, tc.fence, 1, mine, []string{"b"})
			newer, err := keyindex.SaveSeen(ctx, st, "p", tc.newRound, tc.newFence, 1, "", []string{"c"})
			if err != nil {
				t.Fatal(err)
			}
			keyindex.DropSeen(ctx, st, "p", tc.round, tc.fence)
			if seen, err := keyindex.LoadSeen(ctx, st, newer); err != nil || len(seen) != 1 {
				t.Fatalf("a late drop of round %d (fence %d) broke the chain of round %d (fence %d): %v, %v",
					tc.round, tc.fence, tc.newRound, tc.newFence, seen, err)
			}
			for _, n := range []string{old, mine} {
				if _, err := keyindex.LoadSeen(ctx, st, n); err == nil {
					t.Fatalf("%s survived the drop", n)
				}
			}
		})
	}
}
