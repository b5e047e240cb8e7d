package httpsink

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/changelog"
)

// The body is built by appending bytes rather than through encoding/json:
// fields are already JSON (they come from the log) and are copied as they
// are, and everything else is a handful of strings and integers. One POST
// costs one allocation for its body, sized up front.

// encoder writes the CloudEvents of one batch (DESIGN §3.4). The parts that
// depend only on the pipeline and generation are escaped once per Apply.
type encoder struct {
	idHead  []byte // {"specversion":"1.0","id":"<pipeline>-
	idTail  []byte // [.<g>]","source":"sluice/<pipeline>","type":"sluice.change.
	genPart []byte // ","sluicegen":"<g>"
	perItem int    // bytes of an event besides its key, fields and seq digits
}

func newEncoder(pipeline string, generation int64) *encoder {
	p := appendStringContent(nil, pipeline)
	e := &encoder{}
	e.idHead = append(append([]byte(`{"specversion":"1.0","id":"`), p...), '-')
	e.idTail = nil
	if generation != 0 {
		e.idTail = strconv.AppendInt(append(e.idTail, '.'), generation, 10)
	}
	e.idTail = append(e.idTail, `","source":"sluice/`...)
	e.idTail = append(e.idTail, p...)
	e.idTail = append(e.idTail, `","type":"sluice.change.`...)
	e.genPart = strconv.AppendInt([]byte(`,"sluicegen":"`), generation, 10)
	e.genPart = append(e.genPart, '"')
	// upsert","subject":"","time":"2006-01-02T15:04:05.000Z","datacontenttype":"application/json","sluiceseq":"","data":}
	// plus seq digits twice (20 each), the separator, and room for escapes.
	e.perItem = len(e.idHead) + len(e.idTail) + len(e.genPart) + 140 + 40 + 8
	return e
}

// size estimates the body of recs, so that it is allocated once.
func (e *encoder) size(recs []changelog.Record) int {
	n := 2
	for i := range recs {
		n += e.perItem + len(recs[i].Key) + len(recs[i].Fields)
	}
	return n
}

// appendBatch appends the JSON array of events for recs to buf. Fields must
// have passed checkFields.
func (e *encoder) appendBatch(buf []byte, recs []changelog.Record) []byte {
	buf = append(buf, '[')
	for i := range recs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = e.appendEvent(buf, &recs[i])
	}
	return append(buf, ']')
}

func (e *encoder) appendEvent(buf []byte, r *changelog.Record) []byte {
	buf = append(buf, e.idHead...)
	buf = strconv.AppendInt(buf, r.Seq, 10)
	buf = append(buf, e.idTail...)
	del := r.Op == changelog.OpDelete
	if del {
		buf = append(buf, `delete","subject":"`...)
	} else {
		buf = append(buf, `upsert","subject":"`...)
	}
	buf = appendStringContent(buf, r.Key)
	buf = append(buf, `","time":"`...)
	buf = r.TS.UTC().AppendFormat(buf, changelog.TSFormat)
	buf = append(buf, `","datacontenttype":"application/json","sluiceseq":"`...)
	buf = strconv.AppendInt(buf, r.Seq, 10)
	buf = append(buf, '"')
	buf = append(buf, e.genPart...)
	if !del {
		buf = append(buf, `,"data":`...)
		if f := r.Fields; isNull(f) {
			buf = append(buf, "{}"...) // an upsert with no fields: an empty object, never null
		} else {
			buf = append(buf, f...)
		}
	}
	return append(buf, '}')
}

// checkFields says why an upsert's fields cannot be sent as event data, or
// "" when they can. They are copied into the body unparsed, so anything but
// a JSON object would corrupt the whole POST; the log only holds objects,
// but a bad record must cost only itself.
func checkFields(r *changelog.Record) string {
	if r.Op == changelog.OpDelete || isNull(r.Fields) {
		return ""
	}
	f := bytes.TrimLeft(r.Fields, " \t\r\n")
	if len(f) == 0 || f[0] != '{' || !json.Valid(f) {
		return "fields are not a JSON object: the record cannot be sent as event data"
	}
	return ""
}

func isNull(f []byte) bool {
	return len(f) == 0 || string(f) == "null"
}

// appendStringContent appends s as the inside of a JSON string (without the
// quotes). Invalid UTF-8 becomes U+FFFD, as encoding/json does, so a key can
// never make the body invalid JSON.
func appendStringContent(buf []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
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
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	return append(buf, s[start:]...)
}

const hexDigits = "0123456789abcdef"
