package qflare

import (
	"encoding/binary"
	"math"
	"regexp"
	"unicode/utf8"
)

type ftKind uint8

const (
	fID ftKind = iota
	fInt
	fEnum
	fStr // max characters, optional regexp
	fBin // exact length, or any when n < 0
	fOpt
	fMapStrStr
	fFloats
	fScalars
	fArray
	fTensors
)

// ft is the type of one body field (§7).
type ft struct {
	kind ftKind
	min  uint64
	n    int
	enum []string
	re   *regexp.Regexp
	elem *ft
}

var (
	tID       = &ft{kind: fID}
	tInt      = &ft{kind: fInt}
	tInt1     = &ft{kind: fInt, min: 1}
	tBin16    = &ft{kind: fBin, n: 16}
	tBin32    = &ft{kind: fBin, n: 32}
	tBinAny   = &ft{kind: fBin, n: -1}
	tPub      = &ft{kind: fBin, n: PublicKeySize}
	tKEMPub   = &ft{kind: fBin, n: KEMPublicSize}
	tSigAlg   = enum(SigAlg)
	tLabels   = &ft{kind: fMapStrStr}
	tFloats   = &ft{kind: fFloats}
	tScalars  = &ft{kind: fScalars}
	tIDs      = &ft{kind: fArray, elem: tID}
	tTensors  = &ft{kind: fTensors}
	tAnyStr   = &ft{kind: fStr, n: -1}
	tEventStr = &ft{kind: fStr, n: 64, re: eventRe}
)

func enum(vs ...string) *ft   { return &ft{kind: fEnum, enum: vs} }
func opt(t *ft) *ft           { return &ft{kind: fOpt, elem: t} }
func strMax(n int) *ft        { return &ft{kind: fStr, n: n} }
func arrayOf(t *ft) *ft       { return &ft{kind: fArray, elem: t} }
func f(name string, t *ft) fd { return fd{name, t} }

type fd struct {
	name string
	t    *ft
}

// bodySchemas lists every body type of §7 and §9 with its keys in encoder order.
var bodySchemas = map[string][]fd{
	"enrollment": {f("device_id", tID), f("public_key", tPub), f("sig_alg", tSigAlg),
		f("kem_public_key", opt(tKEMPub)), f("token", opt(strMax(512))), f("labels", tLabels)},
	"deregistration": {f("device_id", tID), f("reason", strMax(256))},
	"heartbeat": {f("device_id", tID), f("seq", tInt), f("state", enum("idle", "training", "uploading")),
		f("metrics", tFloats)},
	"device": {f("device_id", tID), f("status", enum("active", "revoked", "deregistered")),
		f("public_key", tPub), f("key_id", tBin16), f("sig_alg", tSigAlg), f("kem_public_key", opt(tKEMPub)),
		f("labels", tLabels), f("enrolled_ms", tInt), f("updated_ms", tInt)},
	"device_health": {f("device_id", tID), f("state", enum("online", "stale", "offline")), f("last_seen_ms", tInt)},
	"round_task": {f("job_id", tID), f("round", tInt), f("model_version", tInt), f("strategy", tID),
		f("devices", tIDs), f("deadline_ms", tInt), f("min_updates", tInt1), f("config", tScalars)},
	"model": {f("job_id", tID), f("version", tInt), f("round", opt(tInt)), f("tensors", tTensors),
		f("metadata", tScalars)},
	"model_update": {f("job_id", tID), f("round", tInt), f("device_id", tID), f("base_version", tInt),
		f("num_examples", tInt), f("tensors", tTensors), f("metrics", tFloats)},
	"round_complete": {f("job_id", tID), f("round", tInt),
		f("status", enum("completed", "quorum_not_met", "failed")), f("model_version", tInt),
		f("num_updates", tInt), f("num_examples", tInt), f("included", tIDs), f("model_digest", opt(tBin32)),
		f("metrics", tFloats)},
	"audit_event": {f("event", tEventStr), f("severity", enum("info", "warning", "error", "critical")),
		f("source", tID), f("reason", strMax(1024)), f("subject", opt(strMax(256))), f("ref_id", opt(tBin16)),
		f("detail", tScalars)},
	"job_command": {f("job_id", tID), f("command", enum("start", "pause", "resume", "stop")),
		f("config", tScalars)},
	"registry_command": {f("command", enum("issue_tokens", "revoke", "rotate_key")), f("device_id", opt(tID)),
		f("token_hashes", arrayOf(tBin32)), f("expires_ms", tInt), f("labels", tLabels)},
	"model_chunk": {f("inner_type", tAnyStr), f("size", tInt1), f("offset", tInt), f("digest", tBin32),
		f("data", tBinAny)},
}

// BodyTypes returns the body type names of §7.
func BodyTypes() []string {
	out := make([]string, 0, len(bodySchemas))
	for k := range bodySchemas {
		out = append(out, k)
	}
	return out
}

// DecodeBody parses and validates a body of the given type (§6 step 12, §7, §8).
func DecodeBody(typ string, raw []byte, allowNonFinite bool) (Value, error) {
	v, err := Unmarshal(raw, BodyLimits, "body")
	if err != nil {
		return Value{}, err
	}
	return v, ValidateBody(typ, v, allowNonFinite)
}

// ValidateBody checks a parsed body against §7.
func ValidateBody(typ string, v Value, allowNonFinite bool) error {
	schema, ok := bodySchemas[typ]
	if !ok {
		return errf("schema", "type", "unknown body type %q", typ)
	}
	if v.Kind != KMap {
		return errf("schema", "body", "body is %s, not map", v.Kind)
	}
	for _, e := range v.Map {
		found := false
		for _, d := range schema {
			found = found || d.name == e.Key
		}
		if !found {
			return errf("schema", "body."+e.Key, "unknown body key")
		}
	}
	for _, d := range schema {
		x, ok := v.Get(d.name)
		path := "body." + d.name
		if !ok {
			return errf("schema", path, "missing body key")
		}
		if err := check(d.t, x, path, allowNonFinite); err != nil {
			return err
		}
	}
	get := func(k string) Value { x, _ := v.Get(k); return x }
	switch typ {
	case "device":
		id := KeyID(get("public_key").Raw)
		if string(id[:]) != string(get("key_id").Raw) {
			return errf("schema", "body.key_id", "key_id is not the id of public_key")
		}
	case "registry_command":
		issue := get("command").S == "issue_tokens"
		if issue != (get("device_id").Kind == KNil) {
			return errf("schema", "body.device_id", "device_id must be nil exactly for issue_tokens")
		}
	case "model_chunk":
		it := get("inner_type").S
		if it == "model_chunk" || bodySchemas[it] == nil {
			return errf("schema", "body.inner_type", "not a carried body type")
		}
	}
	return nil
}

func isNonNegInt(x Value) bool { return x.Kind == KInt && !x.Neg }

func check(t *ft, x Value, path string, allowNonFinite bool) error {
	switch t.kind {
	case fID:
		if x.Kind != KStr || !idRe.MatchString(x.S) {
			return errf("schema", path, "not an id")
		}
	case fInt:
		if !isNonNegInt(x) || x.U > math.MaxInt64 || x.U < t.min {
			return errf("schema", path, "not an int in %d..2^63-1", t.min)
		}
	case fEnum:
		if x.Kind != KStr {
			return errf("schema", path, "not a str")
		}
		for _, e := range t.enum {
			if e == x.S {
				return nil
			}
		}
		return errf("schema", path, "%q not one of %v", x.S, t.enum)
	case fStr:
		if x.Kind != KStr || (t.n >= 0 && utf8.RuneCountInString(x.S) > t.n) || (t.re != nil && !t.re.MatchString(x.S)) {
			return errf("schema", path, "not a valid str")
		}
	case fBin:
		if x.Kind != KBin || (t.n >= 0 && len(x.Raw) != t.n) {
			return errf("schema", path, "not bin of the right length")
		}
	case fOpt:
		if x.Kind == KNil {
			return nil
		}
		return check(t.elem, x, path, allowNonFinite)
	case fMapStrStr:
		if x.Kind != KMap {
			return errf("schema", path, "not a map")
		}
		for _, e := range x.Map {
			if e.Val.Kind != KStr {
				return errf("schema", joinKey(path, e.Key), "not a str")
			}
		}
	case fFloats:
		if x.Kind != KMap {
			return errf("schema", path, "not a map")
		}
		for _, e := range x.Map {
			p := joinKey(path, e.Key)
			switch e.Val.Kind {
			case KFloat:
				if !allowNonFinite && (math.IsNaN(e.Val.F) || math.IsInf(e.Val.F, 0)) {
					return errf("non_finite", p, "not finite")
				}
			case KInt:
			default:
				return errf("schema", p, "not a number")
			}
		}
	case fScalars:
		if x.Kind != KMap {
			return errf("schema", path, "not a map")
		}
		for _, e := range x.Map {
			p := joinKey(path, e.Key)
			switch e.Val.Kind {
			case KNil, KBool, KInt, KStr:
			case KFloat:
				if !allowNonFinite && (math.IsNaN(e.Val.F) || math.IsInf(e.Val.F, 0)) {
					return errf("non_finite", p, "not finite")
				}
			default:
				return errf("schema", p, "not a scalar")
			}
		}
	case fArray:
		if x.Kind != KArray {
			return errf("schema", path, "not an array")
		}
		for i, e := range x.Arr {
			if err := check(t.elem, e, joinIndex(path, i), allowNonFinite); err != nil {
				return err
			}
		}
	case fTensors:
		if x.Kind != KArray {
			return errf("schema", path, "not an array")
		}
		names := map[string]bool{}
		for i, e := range x.Arr {
			p := joinIndex(path, i)
			tn, err := CheckTensor(e, p, allowNonFinite)
			if err != nil {
				return err
			}
			if names[tn.Name] {
				return errf("schema", p+".name", "duplicate tensor name")
			}
			names[tn.Name] = true
		}
	}
	return nil
}

// ---------------------------------------------------------------- tensors (§8)

// DTypeSize maps the dtype strings of §8 to element sizes.
var DTypeSize = map[string]int{"<f4": 4, "<f2": 2, "bf16": 2, "|i1": 1, "|u1": 1}

// Tensor is a checked tensor; Data aliases the record.
type Tensor struct {
	Name  string
	DType string
	Shape []uint64
	Data  []byte
}

// CheckTensor validates one tensor map at path.
func CheckTensor(x Value, path string, allowNonFinite bool) (*Tensor, error) {
	if x.Kind != KMap || len(x.Map) != 4 {
		return nil, errf("schema", path, "tensor must be a map of exactly 4 keys")
	}
	name, ok1 := x.Get("name")
	dtype, ok2 := x.Get("dtype")
	shape, ok3 := x.Get("shape")
	data, ok4 := x.Get("data")
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return nil, errf("schema", path, "tensor keys must be name, dtype, shape, data")
	}
	if name.Kind != KStr {
		return nil, errf("schema", path+".name", "not a str")
	}
	if n := utf8.RuneCountInString(name.S); n < 1 || n > 256 {
		return nil, errf("schema", path+".name", "length %d not in 1..256", n)
	}
	if dtype.Kind != KStr {
		return nil, errf("schema", path+".dtype", "not a str")
	}
	size, ok := DTypeSize[dtype.S]
	if !ok {
		return nil, errf("tensor", path+".dtype", "unsupported dtype %q", dtype.S)
	}
	if shape.Kind != KArray {
		return nil, errf("schema", path+".shape", "not an array")
	}
	if len(shape.Arr) > 8 {
		return nil, errf("tensor", path+".shape", "%d dimensions exceed 8", len(shape.Arr))
	}
	t := &Tensor{Name: name.S, DType: dtype.S}
	want := uint64(size)
	overflow := false
	for i, d := range shape.Arr {
		if d.Kind != KInt {
			return nil, errf("schema", joinIndex(path+".shape", i), "not an int")
		}
		if d.Neg || d.U > math.MaxInt32 {
			return nil, errf("tensor", joinIndex(path+".shape", i), "dimension not in 0..2^31-1")
		}
		t.Shape = append(t.Shape, d.U)
		if d.U != 0 && want > math.MaxUint64/d.U {
			overflow = true
		}
		want *= d.U
	}
	if data.Kind != KBin {
		return nil, errf("schema", path+".data", "not bin")
	}
	t.Data = data.Raw
	if overflow && want != 0 || want != uint64(len(data.Raw)) {
		return nil, errf("tensor", path+".data", "data is %d bytes, shape needs %d", len(data.Raw), want)
	}
	if !allowNonFinite && !tensorFinite(t.DType, t.Data) {
		return nil, errf("non_finite", path+".data", "NaN or infinity in tensor")
	}
	return t, nil
}

func tensorFinite(dtype string, data []byte) bool {
	switch dtype {
	case "<f4":
		for i := 0; i+4 <= len(data); i += 4 {
			if binary.LittleEndian.Uint32(data[i:])&0x7f800000 == 0x7f800000 {
				return false
			}
		}
	case "<f2":
		for i := 0; i+2 <= len(data); i += 2 {
			if binary.LittleEndian.Uint16(data[i:])&0x7c00 == 0x7c00 {
				return false
			}
		}
	case "bf16":
		for i := 0; i+2 <= len(data); i += 2 {
			if binary.LittleEndian.Uint16(data[i:])&0x7f80 == 0x7f80 {
				return false
			}
		}
	}
	return true
}

// Float64s decodes the tensor elements as float64 values.
func (t *Tensor) Float64s() []float64 {
	size := DTypeSize[t.DType]
	out := make([]float64, 0, len(t.Data)/size)
	for i := 0; i+size <= len(t.Data); i += size {
		var x float64
		switch t.DType {
		case "<f4":
			x = float64(math.Float32frombits(binary.LittleEndian.Uint32(t.Data[i:])))
		case "<f2":
			x = float16(binary.LittleEndian.Uint16(t.Data[i:]))
		case "bf16":
			x = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(t.Data[i:])) << 16))
		case "|i1":
			x = float64(int8(t.Data[i]))
		case "|u1":
			x = float64(t.Data[i])
		}
		out = append(out, x)
	}
	return out
}

func float16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(frac, -24)
	case 0x1f:
		if frac != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * math.Ldexp(1+frac/1024, exp-15)
}
