// Package keyindex keeps a cache of a pipeline's live keys with a hash of
// their fields, derived from the change log and stamped with the seq it
// covers. It is never a source of truth: a missing or stale index is caught
// up from the log before use, and a corrupt one is rebuilt from it.
//
// The read path uses it at the start of a full round (an initial
// enumeration after a 410, or a changed field list): to know which keys were
// live before the round, and to skip upserts whose fields did not change.
package keyindex

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/klauspost/compress/gzip"
	"hash/fnv"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
)

// Entry is one live key and the hash of its fields.
type Entry struct {
	Key  string
	Hash uint64
}

// Index is the set of live keys after the log's first Seq records, sorted
// by key.
type Index struct {
	Seq     int64
	Entries []Entry
}

// HashFields hashes a record's fields as stored. Graph returns the fields
// of an unchanged item identically, so an equal hash means "no change"; a
// difference in mere encoding only costs a redundant upsert.
func HashFields(raw []byte) uint64 {
	h := fnv.New64a()
	h.Write(raw)
	return h.Sum64() | 1 // never 0, so 0 can mean "absent"
}

// Lookup returns the hash of key's fields, and whether the key is live.
func (ix *Index) Lookup(key string) (uint64, bool) {
	i, ok := slices.BinarySearchFunc(ix.Entries, key, func(e Entry, k string) int { return strings.Compare(e.Key, k) })
	if !ok {
		return 0, false
	}
	return ix.Entries[i].Hash, true
}

// Len is the number of live keys.
func (ix *Index) Len() int { return len(ix.Entries) }

// CatchUp applies the log's records after ix.Seq up to to (a committed
// head) and returns the index for to. Memory grows with the keys that
// changed, not with the log.
func CatchUp(ctx context.Context, lg *changelog.Log, ix *Index, to int64) (*Index, error) {
	if ix == nil {
		ix = &Index{}
	}
	if to <= ix.Seq {
		return ix, nil
	}
	changed := map[string]uint64{} // 0: deleted
	sc := lg.Scan(ctx, ix.Seq+1, to)
	defer sc.Close()
	for sc.Next() {
		r := sc.Record()
		if r.Op == changelog.OpDelete {
			changed[r.Key] = 0
		} else {
			changed[r.Key] = HashFields(r.Fields)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("catch up key index of %s to %d: %w", lg.Pipeline(), to, err)
	}
	return ix.merge(changed, to), nil
}

// merge returns a new index with changed applied (0 removes a key).
func (ix *Index) merge(changed map[string]uint64, seq int64) *Index {
	keys := make([]string, 0, len(changed))
	for k := range changed {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]Entry, 0, len(ix.Entries)+len(keys))
	i, j := 0, 0
	for i < len(ix.Entries) || j < len(keys) {
		switch {
		case j == len(keys) || (i < len(ix.Entries) && ix.Entries[i].Key < keys[j]):
			out = append(out, ix.Entries[i])
			i++
		default:
			k := keys[j]
			if i < len(ix.Entries) && ix.Entries[i].Key == k {
				i++
			}
			if h := changed[k]; h != 0 {
				out = append(out, Entry{Key: k, Hash: h})
			}
			j++
		}
	}
	return &Index{Seq: seq, Entries: out}
}

func prefix(pipeline string) string { return pipeline + "/index/keys/" }

func name(pipeline string, seq int64) string {
	return fmt.Sprintf("%s%020d.kix.gz", prefix(pipeline), seq)
}

// Load returns the newest stored index that covers at most maxSeq, or an
// empty index (Seq 0) when there is none or the stored one is unreadable.
func Load(ctx context.Context, st *azstore.Store, pipeline string, maxSeq int64) (*Index, error) {
	var best string
	var bestSeq int64 = -1
	err := st.List(ctx, prefix(pipeline), func(bi azstore.BlobInfo) error {
		base := bi.Name[len(prefix(pipeline)):]
		seq, err := strconv.ParseInt(strings.TrimSuffix(base, ".kix.gz"), 10, 64)
		if err == nil && seq <= maxSeq && seq > bestSeq {
			best, bestSeq = bi.Name, seq
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load key index of %s: %w", pipeline, err)
	}
	if best == "" {
		return &Index{}, nil
	}
	rc, _, err := st.Read(ctx, best)
	if errors.Is(err, azstore.ErrNotFound) {
		return &Index{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load key index %s: %w", best, err)
	}
	defer rc.Close()
	ix, err := decode(rc, bestSeq)
	if err != nil {
		// A cache: rebuild from the log rather than fail.
		return &Index{}, nil
	}
	return ix, nil
}

// Save stores ix (create-only; an index for the same seq holds the same
// keys, so losing that race is fine) and removes older ones.
func Save(ctx context.Context, st *azstore.Store, pipeline string, ix *Index) error {
	var buf strings.Builder
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	bw := bufio.NewWriter(zw)
	var tmp [binary.MaxVarintLen64 + 8]byte
	for _, e := range ix.Entries {
		n := binary.PutUvarint(tmp[:], uint64(len(e.Key)))
		bw.Write(tmp[:n])
		bw.WriteString(e.Key)
		binary.LittleEndian.PutUint64(tmp[:8], e.Hash)
		bw.Write(tmp[:8])
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if _, err := st.Create(ctx, name(pipeline, ix.Seq), []byte(buf.String()), map[string]string{"count": strconv.Itoa(len(ix.Entries))}); err != nil && !errors.Is(err, azstore.ErrConflict) {
		return fmt.Errorf("save key index of %s at %d: %w", pipeline, ix.Seq, err)
	}
	// Keep the two newest: a reader may still be loading the previous one.
	var names []string
	_ = st.List(ctx, prefix(pipeline), func(bi azstore.BlobInfo) error { names = append(names, bi.Name); return nil })
	slices.Sort(names)
	for len(names) > 2 {
		_ = st.Delete(ctx, names[0], "")
		names = names[1:]
	}
	return nil
}

func decode(r io.Reader, seq int64) (*Index, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(zr)
	ix := &Index{Seq: seq}
	var h [8]byte
	prev := ""
	for {
		n, err := binary.ReadUvarint(br)
		if err == io.EOF {
			break
		}
		if err != nil || n > 1<<20 {
			return nil, fmt.Errorf("corrupt key index")
		}
		key := make([]byte, n)
		if _, err := io.ReadFull(br, key); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return nil, err
		}
		k := string(key)
		if len(ix.Entries) > 0 && k <= prev {
			return nil, fmt.Errorf("corrupt key index: keys out of order")
		}
		ix.Entries = append(ix.Entries, Entry{Key: k, Hash: binary.LittleEndian.Uint64(h[:])})
		prev = k
	}
	return ix, nil
}
