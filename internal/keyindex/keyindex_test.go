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
	n1, err := keyindex.SaveSeen(ctx, st, "p", 10, 1, 20, "", []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	n2, err := keyindex.SaveSeen(ctx, st, "p", 10, 1, 30, n1, []string{"c"})
	if err != nil {
		t.Fatal(err)
	}
	// An orphan from a crashed pass, never committed: not in the chain.
	if _, err := keyindex.SaveSeen(ctx, st, "p", 10, 1, 40, n2, []string{"zzz"}); err != nil {
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
	keyindex.DropSeen(ctx, st, "p")
	if _, err := keyindex.LoadSeen(ctx, st, n2); err == nil {
		t.Fatal("dropped chain still readable")
	}
}
