package sqlsink

import (
	"crypto/sha256"
	"encoding/hex"
	"unicode/utf16"
	"unicode/utf8"
)

// shorten returns name unchanged when it fits in max units (bytes when
// utf16Units is false, UTF-16 code units otherwise); a longer name keeps a
// prefix cut at a rune boundary and ends in "_" plus 8 hex digits of the
// SHA-256 of the whole name. The result is deterministic, so every sink (and
// every restart) maps a field to the same column.
func shorten(name string, max int, utf16Units bool) string {
	size := func(r rune) int {
		if utf16Units {
			return utf16.RuneLen(r)
		}
		return utf8.RuneLen(r)
	}
	total := 0
	for _, r := range name {
		total += size(r)
	}
	if max <= 0 || total <= max {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	suffix := "_" + hex.EncodeToString(sum[:4])
	budget := max - len(suffix)
	n, end := 0, 0
	for end < len(name) {
		r, w := utf8.DecodeRuneInString(name[end:])
		if n+size(r) > budget {
			break
		}
		n += size(r)
		end += w
	}
	return name[:end] + suffix
}
