// Package qflare is an independent implementation of the QFLARE wire protocol,
// version 1, written from docs/protocol.md and checked against the golden
// vectors in tests/vectors/.
package qflare

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Kind is the msgpack family of a decoded value (§1).
type Kind uint8

// The msgpack families of §1.
const (
	KNil Kind = iota
	KBool
	KInt
	KFloat
	KStr
	KBin
	KArray
	KMap
)

func (k Kind) String() string {
	return [...]string{"nil", "bool", "int", "float", "str", "bin", "array", "map"}[k]
}

// Value is one decoded msgpack value. Maps keep their wire order.
type Value struct {
	Kind Kind
	Bool bool
	Neg  bool    // KInt: value is negative and held in I
	U    uint64  // KInt: non-negative value
	I    int64   // KInt: negative value
	F    float64 // KFloat
	F32  bool    // KFloat: was (or is to be) float32 on the wire
	S    string  // KStr
	Raw  []byte  // KBin (aliases the decoded buffer)
	Arr  []Value // KArray
	Map  []Entry // KMap, in order
}

// Entry is one key/value pair of a map.
type Entry struct {
	Key string
	Val Value
}

// Constructors.
func Nil() Value                { return Value{Kind: KNil} }
func Bool(b bool) Value         { return Value{Kind: KBool, Bool: b} }
func Uint(u uint64) Value       { return Value{Kind: KInt, U: u} }
func Float(f float64) Value     { return Value{Kind: KFloat, F: f} }
func Str(s string) Value        { return Value{Kind: KStr, S: s} }
func Bin(b []byte) Value        { return Value{Kind: KBin, Raw: b} }
func Array(vs ...Value) Value   { return Value{Kind: KArray, Arr: vs} }
func MapOf(es ...Entry) Value   { return Value{Kind: KMap, Map: es} }
func E(k string, v Value) Entry { return Entry{k, v} }

// Int builds an int value from a signed integer.
func Int(i int64) Value {
	if i < 0 {
		return Value{Kind: KInt, Neg: true, I: i}
	}
	return Value{Kind: KInt, U: uint64(i)}
}

// Get returns the value stored under key in a map value.
func (v Value) Get(key string) (Value, bool) {
	for _, e := range v.Map {
		if e.Key == key {
			return e.Val, true
		}
	}
	return Value{}, false
}

// Equal compares two values structurally (map order included).
func (v Value) Equal(w Value) bool {
	if v.Kind != w.Kind {
		return false
	}
	switch v.Kind {
	case KNil:
		return true
	case KBool:
		return v.Bool == w.Bool
	case KInt:
		return v.Neg == w.Neg && v.U == w.U && v.I == w.I
	case KFloat:
		return math.Float64bits(v.F) == math.Float64bits(w.F)
	case KStr:
		return v.S == w.S
	case KBin:
		return bytes.Equal(v.Raw, w.Raw)
	case KArray:
		if len(v.Arr) != len(w.Arr) {
			return false
		}
		for i := range v.Arr {
			if !v.Arr[i].Equal(w.Arr[i]) {
				return false
			}
		}
		return true
	case KMap:
		if len(v.Map) != len(w.Map) {
			return false
		}
		for i := range v.Map {
			if v.Map[i].Key != w.Map[i].Key || !v.Map[i].Val.Equal(w.Map[i].Val) {
				return false
			}
		}
		return true
	}
	return false
}

// ---------------------------------------------------------------- encoding

// AppendNil and friends append the shortest msgpack form (§1) to dst.
func AppendNil(dst []byte) []byte { return append(dst, 0xc0) }

func AppendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, 0xc3)
	}
	return append(dst, 0xc2)
}

func AppendUint(dst []byte, u uint64) []byte {
	switch {
	case u <= 0x7f:
		return append(dst, byte(u))
	case u <= math.MaxUint8:
		return append(dst, 0xcc, byte(u))
	case u <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(u))
	case u <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(u))
	default:
		return binary.BigEndian.AppendUint64(append(dst, 0xcf), u)
	}
}

func AppendInt(dst []byte, i int64) []byte {
	switch {
	case i >= 0:
		return AppendUint(dst, uint64(i))
	case i >= -32:
		return append(dst, byte(int8(i)))
	case i >= math.MinInt8:
		return append(dst, 0xd0, byte(int8(i)))
	case i >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(dst, 0xd1), uint16(int16(i)))
	case i >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(dst, 0xd2), uint32(int32(i)))
	default:
		return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(i))
	}
}

// AppendFloat64 writes cb + IEEE binary64, the only float form encoders use.
func AppendFloat64(dst []byte, f float64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, 0xcb), math.Float64bits(f))
}

func AppendStr(dst []byte, s string) []byte {
	n := len(s)
	switch {
	case n <= 31:
		dst = append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		dst = append(dst, 0xd9, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xda), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xdb), uint32(n))
	}
	return append(dst, s...)
}

func AppendBin(dst []byte, b []byte) []byte {
	n := len(b)
	switch {
	case n <= math.MaxUint8:
		dst = append(dst, 0xc4, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xc5), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xc6), uint32(n))
	}
	return append(dst, b...)
}

func AppendArrayHeader(dst []byte, n int) []byte {
	switch {
	case n <= 15:
		return append(dst, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xdc), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(dst, 0xdd), uint32(n))
	}
}

func AppendMapHeader(dst []byte, n int) []byte {
	switch {
	case n <= 15:
		return append(dst, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xde), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(dst, 0xdf), uint32(n))
	}
}

// AppendValue writes v in shortest form. A float is always written as
// float64 (cb), even one that was read as float32, as §1 requires.
func AppendValue(dst []byte, v Value) []byte {
	switch v.Kind {
	case KNil:
		return AppendNil(dst)
	case KBool:
		return AppendBool(dst, v.Bool)
	case KInt:
		if v.Neg {
			return AppendInt(dst, v.I)
		}
		return AppendUint(dst, v.U)
	case KFloat:
		return AppendFloat64(dst, v.F)
	case KStr:
		return AppendStr(dst, v.S)
	case KBin:
		return AppendBin(dst, v.Raw)
	case KArray:
		dst = AppendArrayHeader(dst, len(v.Arr))
		for _, e := range v.Arr {
			dst = AppendValue(dst, e)
		}
		return dst
	case KMap:
		dst = AppendMapHeader(dst, len(v.Map))
		for _, e := range v.Map {
			dst = AppendStr(dst, e.Key)
			dst = AppendValue(dst, e.Val)
		}
		return dst
	}
	panic("qflare: unknown kind")
}

// Marshal encodes v in shortest form.
func Marshal(v Value) []byte { return AppendValue(nil, v) }

// ---------------------------------------------------------------- decoding

// Limits bound what the parser accepts (§10).
type Limits struct {
	MaxDepth int // nesting of arrays and maps; the outermost container is depth 1
	MaxArray int
	MaxMap   int
	MaxStr   int // bytes
	MaxBin   int // bytes
}

// BodyLimits and EnvelopeLimits are the defaults of §10.
var (
	BodyLimits     = Limits{MaxDepth: 16, MaxArray: 100_000, MaxMap: 4096, MaxStr: 64 * 1024, MaxBin: MaxMessage}
	EnvelopeLimits = Limits{MaxDepth: 2, MaxArray: 0, MaxMap: 16, MaxStr: 256, MaxBin: MaxRecord}
)

// Error is a refusal with the reason and field of §6.
type Error struct {
	Reason string // schema, limit, version, unknown_key, key_mismatch, signature, digest, stale, replay, tensor, non_finite, chunk
	Field  string
	Msg    string
}

func (e *Error) Error() string { return fmt.Sprintf("%s at %s: %s", e.Reason, e.Field, e.Msg) }

func errf(reason, field, format string, args ...any) *Error {
	if field == "" {
		field = "$"
	}
	return &Error{Reason: reason, Field: field, Msg: fmt.Sprintf(format, args...)}
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func joinIndex(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

type parser struct {
	buf []byte
	pos int
	lim Limits
}

// Unmarshal parses exactly one value filling buf. path names the root in
// errors ("" for the envelope, "body" for a body). Bin values alias buf.
// A container header is checked for depth, then its length against the
// limit (limit), then against the bytes left (schema), as §10 orders them.
func Unmarshal(buf []byte, lim Limits, path string) (Value, error) {
	p := &parser{buf: buf, lim: lim}
	v, err := p.value(path, 0)
	if err != nil {
		return Value{}, err
	}
	if p.pos != len(buf) {
		return Value{}, errf("schema", path, "%d trailing bytes", len(buf)-p.pos)
	}
	return v, nil
}

func (p *parser) remaining() int { return len(p.buf) - p.pos }

func (p *parser) take(n int, path string) ([]byte, error) {
	if n < 0 || n > p.remaining() {
		return nil, errf("schema", path, "truncated: need %d bytes, %d remain", n, p.remaining())
	}
	b := p.buf[p.pos : p.pos+n]
	p.pos += n
	return b, nil
}

func (p *parser) uintN(size int, path string) (uint64, error) {
	b, err := p.take(size, path)
	if err != nil {
		return 0, err
	}
	var u uint64
	for _, c := range b {
		u = u<<8 | uint64(c)
	}
	return u, nil
}

func (p *parser) value(path string, depth int) (Value, error) {
	b, err := p.take(1, path)
	if err != nil {
		return Value{}, err
	}
	t := b[0]
	switch {
	case t <= 0x7f:
		return Uint(uint64(t)), nil
	case t >= 0xe0:
		return Int(int64(int8(t))), nil
	case t >= 0xa0 && t <= 0xbf:
		return p.str(int(t&0x1f), path)
	case t >= 0x90 && t <= 0x9f:
		return p.array(int(t&0x0f), path, depth)
	case t >= 0x80 && t <= 0x8f:
		return p.mapv(int(t&0x0f), path, depth)
	}
	switch t {
	case 0xc0:
		return Nil(), nil
	case 0xc2:
		return Bool(false), nil
	case 0xc3:
		return Bool(true), nil
	case 0xcc, 0xcd, 0xce, 0xcf:
		u, err := p.uintN(1<<(t-0xcc), path)
		return Uint(u), err
	case 0xd0, 0xd1, 0xd2, 0xd3:
		size := 1 << (t - 0xd0)
		u, err := p.uintN(size, path)
		if err != nil {
			return Value{}, err
		}
		shift := 64 - 8*size
		return Int(int64(u<<shift) >> shift), nil
	case 0xca:
		u, err := p.uintN(4, path)
		return Value{Kind: KFloat, F: float64(math.Float32frombits(uint32(u))), F32: true}, err
	case 0xcb:
		u, err := p.uintN(8, path)
		return Float(math.Float64frombits(u)), err
	case 0xd9, 0xda, 0xdb:
		n, err := p.uintN(1<<(t-0xd9), path)
		if err != nil {
			return Value{}, err
		}
		return p.str(clampLen(n), path)
	case 0xc4, 0xc5, 0xc6:
		n, err := p.uintN(1<<(t-0xc4), path)
		if err != nil {
			return Value{}, err
		}
		if n > uint64(p.lim.MaxBin) {
			return Value{}, errf("limit", path, "bin of %d bytes exceeds %d", n, p.lim.MaxBin)
		}
		raw, err := p.take(clampLen(n), path)
		if err != nil {
			return Value{}, err
		}
		return Bin(raw), nil
	case 0xdc, 0xdd:
		n, err := p.uintN(2<<(t-0xdc), path)
		if err != nil {
			return Value{}, err
		}
		return p.array(clampLen(n), path, depth)
	case 0xde, 0xdf:
		n, err := p.uintN(2<<(t-0xde), path)
		if err != nil {
			return Value{}, err
		}
		return p.mapv(clampLen(n), path, depth)
	}
	return Value{}, errf("schema", path, "msgpack type byte %#02x is refused", t)
}

func clampLen(n uint64) int {
	if n > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(n)
}

func (p *parser) str(n int, path string) (Value, error) {
	if n > p.lim.MaxStr {
		return Value{}, errf("limit", path, "str of %d bytes exceeds %d", n, p.lim.MaxStr)
	}
	raw, err := p.take(n, path)
	if err != nil {
		return Value{}, err
	}
	if !utf8.Valid(raw) {
		return Value{}, errf("schema", path, "str is not valid UTF-8")
	}
	if bytes.IndexByte(raw, 0) >= 0 {
		return Value{}, errf("schema", path, "str contains a NUL character")
	}
	return Str(string(raw)), nil
}

func (p *parser) array(n int, path string, depth int) (Value, error) {
	if depth+1 > p.lim.MaxDepth {
		return Value{}, errf("limit", path, "nesting deeper than %d", p.lim.MaxDepth)
	}
	if n > p.lim.MaxArray {
		return Value{}, errf("limit", path, "array of %d exceeds %d", n, p.lim.MaxArray)
	}
	if n > p.remaining() { // every element takes at least one byte
		return Value{}, errf("schema", path, "truncated: array of %d, %d bytes remain", n, p.remaining())
	}
	arr := make([]Value, n)
	for i := range arr {
		v, err := p.value(joinIndex(path, i), depth+1)
		if err != nil {
			return Value{}, err
		}
		arr[i] = v
	}
	return Value{Kind: KArray, Arr: arr}, nil
}

func (p *parser) mapv(n int, path string, depth int) (Value, error) {
	if depth+1 > p.lim.MaxDepth {
		return Value{}, errf("limit", path, "nesting deeper than %d", p.lim.MaxDepth)
	}
	if n > p.lim.MaxMap {
		return Value{}, errf("limit", path, "map of %d entries exceeds %d", n, p.lim.MaxMap)
	}
	if 2*n > p.remaining() { // every entry takes at least two bytes
		return Value{}, errf("schema", path, "truncated: map of %d, %d bytes remain", n, p.remaining())
	}
	entries := make([]Entry, 0, n)
	seen := make(map[string]struct{}, n)
	for i := 0; i < n; i++ {
		k, err := p.value(path, depth+1)
		if err != nil {
			return Value{}, err
		}
		if k.Kind != KStr {
			return Value{}, errf("schema", path, "map key is %s, not str", k.Kind)
		}
		if _, dup := seen[k.S]; dup {
			return Value{}, errf("schema", joinKey(path, k.S), "duplicate map key")
		}
		seen[k.S] = struct{}{}
		v, err := p.value(joinKey(path, k.S), depth+1)
		if err != nil {
			return Value{}, err
		}
		entries = append(entries, Entry{k.S, v})
	}
	return Value{Kind: KMap, Map: entries}, nil
}
