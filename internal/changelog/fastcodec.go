package changelog

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"
)

// The log is read far more often than it is written (every destination,
// every replay), and encoding/json spends most of a scan validating and
// compacting fields it then hands on untouched. The fast paths below read
// and write the one layout sluice itself writes; anything else falls back to
// encoding/json, so foreign but valid lines still decode.

// appendRecordJSON writes r exactly in the layout of DESIGN §3.3.
func appendRecordJSON(buf []byte, r *Record) ([]byte, error) {
	buf = append(buf, `{"seq":`...)
	buf = strconv.AppendInt(buf, r.Seq, 10)
	buf = append(buf, `,"ts":"`...)
	buf = r.TS.UTC().AppendFormat(buf, TSFormat)
	buf = append(buf, `","op":`...)
	buf = appendString(buf, string(r.Op))
	buf = append(buf, `,"key":`...)
	buf = appendString(buf, r.Key)
	buf = append(buf, `,"source":{`...)
	first := true
	for _, kv := range [4][2]string{{"site", r.Source.Site}, {"list", r.Source.List}, {"etag", r.Source.ETag}, {"modified", r.Source.Modified}} {
		if kv[1] == "" {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = append(buf, '"')
		buf = append(buf, kv[0]...)
		buf = append(buf, `":`...)
		buf = appendString(buf, kv[1])
	}
	buf = append(buf, '}')
	if len(r.Fields) > 0 && !bytes.Equal(r.Fields, []byte("null")) {
		buf = append(buf, `,"fields":`...)
		if isCompactObject(r.Fields) {
			buf = append(buf, r.Fields...)
		} else {
			var err error
			start := len(buf)
			if buf, err = appendCompact(buf, r.Fields); err != nil {
				return buf[:start], err
			}
		}
	}
	return append(buf, '}'), nil
}

// isCompactObject is a cheap check that raw is a JSON object we may copy
// as is: it starts with '{', ends with '}' and holds no newline (a newline
// would break NDJSON). Values come from json.Marshal upstream.
func isCompactObject(raw []byte) bool {
	return len(raw) >= 2 && raw[0] == '{' && raw[len(raw)-1] == '}' && bytes.IndexByte(raw, '\n') < 0 && bytes.IndexByte(raw, '\r') < 0
}

func appendCompact(buf, raw []byte) ([]byte, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return buf, err
	}
	return append(buf, b.Bytes()...), nil
}

// appendString writes s as a JSON string (without encoding/json's HTML
// escaping, which JSON does not need).
func appendString(buf []byte, s string) []byte {
	if !utf8.ValidString(s) {
		b, _ := json.Marshal(s) // replaces invalid bytes with U+FFFD
		return append(buf, b...)
	}
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		buf = append(buf, s[start:i]...)
		switch c {
		case '"', '\\':
			buf = append(buf, '\\', c)
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\r':
			buf = append(buf, '\\', 'r')
		case '\t':
			buf = append(buf, '\\', 't')
		default:
			buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

const hexDigits = "0123456789abcdef"

var errNotFast = errors.New("not in the fast layout")

// decodeFast reads a line in exactly the layout appendRecordJSON writes.
// It returns errNotFast for anything else; the caller then uses
// encoding/json. Fields is copied out of line (the caller reuses line).
func decodeFast(line []byte, r *Record) error {
	line = bytes.TrimRight(line, "\r\n")
	p := parser{b: line}
	if !p.lit(`{"seq":`) {
		return errNotFast
	}
	seq, ok := p.int()
	if !ok || !p.lit(`,"ts":"`) {
		return errNotFast
	}
	ts, ok := p.ts()
	if !ok || !p.lit(`","op":"`) {
		return errNotFast
	}
	var op Op
	switch {
	case p.lit(`upsert"`):
		op = OpUpsert
	case p.lit(`delete"`):
		op = OpDelete
	default:
		return errNotFast
	}
	if !p.lit(`,"key":`) {
		return errNotFast
	}
	key, ok := p.str()
	if !ok || !p.lit(`,"source":{`) {
		return errNotFast
	}
	var src Source
	for !p.lit("}") {
		if len(src.Site)+len(src.List)+len(src.ETag)+len(src.Modified) > 0 && !p.lit(",") {
			return errNotFast
		}
		name, ok := p.str()
		if !ok || !p.lit(":") {
			return errNotFast
		}
		val, ok := p.str()
		if !ok {
			return errNotFast
		}
		switch name {
		case "site":
			src.Site = val
		case "list":
			src.List = val
		case "etag":
			src.ETag = val
		case "modified":
			src.Modified = val
		default:
			return errNotFast
		}
	}
	var fields json.RawMessage
	if p.lit(`,"fields":`) {
		rest := p.b[p.i:]
		if len(rest) < 3 || rest[0] != '{' || rest[len(rest)-1] != '}' || rest[len(rest)-2] != '}' {
			return errNotFast
		}
		// The layout is ours but the bytes come from storage: a corrupt
		// fields value must fail (on the slow path), not reach a sink.
		if !json.Valid(rest[:len(rest)-1]) {
			return errNotFast
		}
		fields = append(json.RawMessage(nil), rest[:len(rest)-1]...)
	} else if !p.lit("}") || p.i != len(p.b) {
		return errNotFast
	}
	if seq < 1 {
		return errNotFast
	}
	*r = Record{Seq: seq, TS: ts, Op: op, Key: key, Source: src, Fields: fields}
	return nil
}

type parser struct {
	b []byte
	i int
}

func (p *parser) lit(s string) bool {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

func (p *parser) int() (int64, bool) {
	start := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	// Up to 19 digits: every positive int64 (ParseInt refuses an overflow).
	// No leading zero: JSON has none.
	if p.i == start || p.i-start > 19 || (p.b[start] == '0' && p.i-start > 1) {
		return 0, false
	}
	n, err := strconv.ParseInt(string(p.b[start:p.i]), 10, 64)
	return n, err == nil
}

// ts reads "2006-01-02T15:04:05.000Z" without the generic layout parser.
func (p *parser) ts() (time.Time, bool) {
	const n = len(TSFormat)
	if len(p.b)-p.i < n {
		return time.Time{}, false
	}
	s := p.b[p.i : p.i+n]
	d := func(a, b int) (int, bool) {
		v := 0
		for _, c := range s[a:b] {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	if s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' || s[23] != 'Z' {
		return time.Time{}, false
	}
	y, ok1 := d(0, 4)
	mo, ok2 := d(5, 7)
	dd, ok3 := d(8, 10)
	h, ok4 := d(11, 13)
	mi, ok5 := d(14, 16)
	se, ok6 := d(17, 19)
	ms, ok7 := d(20, 23)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || mo < 1 || mo > 12 || dd < 1 || dd > 31 || h > 23 || mi > 59 || se > 59 {
		return time.Time{}, false
	}
	t := time.Date(y, time.Month(mo), dd, h, mi, se, ms*1e6, time.UTC)
	if t.Day() != dd { // e.g. Feb 30 normalised into March
		return time.Time{}, false
	}
	p.i += n
	return t, true
}

// str reads a JSON string; escapes go through encoding/json.
func (p *parser) str() (string, bool) {
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return "", false
	}
	start := p.i
	escaped := false
	for j := p.i + 1; j < len(p.b); j++ {
		switch c := p.b[j]; {
		case c == '\\':
			escaped = true
			j++
		case c < 0x20:
			return "", false
		case c == '"':
			p.i = j + 1
			raw := p.b[start+1 : j]
			if !escaped {
				if !utf8.Valid(raw) {
					return "", false
				}
				return string(raw), true
			}
			var s string
			if err := json.Unmarshal(p.b[start:j+1], &s); err != nil {
				return "", false
			}
			return s, true
		}
	}
	return "", false
}
