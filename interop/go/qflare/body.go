package qflare

import (
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
	fSettings // str -> scalar | (str -> scalar): one level of nesting
	fArray
	fTensors
	fInner  // model_chunk inner_type: a body type of §7 other than model_chunk
	fScores // id -> floats: round_complete's per-update anomaly scores
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
	tSig      = &ft{kind: fBin, n: SigSize}
	tSigAlg   = enum(SigAlg)
	tLabels   = &ft{kind: fMapStrStr}
	tFloats   = &ft{kind: fFloats}
	tScalars  = &ft{kind: fScalars}
	tSettings = &ft{kind: fSettings}
	tScores   = &ft{kind: fScores}
	tIDs      = &ft{kind: fArray, elem: tID}
	tTensors  = &ft{kind: fTensors}
	tEventStr = &ft{kind: fStr, n: 64, re: eventRe}
	tReason   = &ft{kind: fStr, n: 64, re: reasonRe}
	// A stored model's name and version (§7.3), as a job's model "<name>@<version>" names them.
	modelNameRe    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	modelVersionRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	// A failed reply's reason (§7): a rejection reason or the name of the exception a device caught.
	failureReasonRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.]{0,63}$`)
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
		f("kem_public_key", opt(tKEMPub)), f("token_id", opt(tBin16)), f("token_mac", opt(tBin32)),
		f("rotation_proof", opt(tSig)), f("labels", tLabels)},
	"enrollment_result": {f("device_id", tID), f("enrollment_id", tBin16), f("key_id", tBin16),
		f("status", enum("accepted", "rejected")), f("reason", tReason), f("field", opt(strMax(256))),
		f("message", strMax(1024))},
	"deregistration": {f("device_id", tID), f("reason", strMax(256))},
	"heartbeat": {f("device_id", tID), f("seq", tInt), f("state", enum("idle", "training", "uploading")),
		f("metrics", tFloats)},
	"device": {f("device_id", tID), f("status", enum("active", "suspended", "revoked", "deregistered", "deleted")),
		f("public_key", tPub), f("key_id", tBin16), f("sig_alg", tSigAlg), f("kem_public_key", opt(tKEMPub)),
		f("labels", tLabels), f("enrolled_ms", tInt), f("updated_ms", tInt), f("revision", tInt1)},
	"device_health": {f("device_id", tID), f("state", enum("online", "stale", "offline")), f("last_seen_ms", tInt)},
	"round_task": {f("job_id", tID), f("round", tInt), f("model_version", tInt), f("strategy", tID),
		f("devices", tIDs), f("deadline_ms", tInt), f("min_updates", tInt1), f("fencing_token", tInt),
		f("config", tScalars)},
	"model": {f("job_id", tID), f("version", tInt), f("round", opt(tInt)), f("tensors", tTensors),
		f("metadata", tScalars)},
	"model_update": {f("job_id", tID), f("round", tInt), f("device_id", tID), f("base_version", tInt),
		f("num_examples", tInt), f("tensors", tTensors), f("metrics", tFloats)},
	"round_failure": {f("job_id", tID), f("round", tInt), f("device_id", tID), f("base_version", tInt),
		f("reason", &ft{kind: fStr, n: 64, re: failureReasonRe}), f("message", strMax(1000))},
	"round_complete": {f("job_id", tID), f("round", tInt),
		f("status", enum("completed", "quorum_not_met", "failed", "held")), f("model_version", tInt),
		f("num_updates", tInt), f("num_examples", tInt), f("included", tIDs), f("model_digest", opt(tBin32)),
		f("metrics", tFloats), f("evaluation", opt(enum("central", "federated"))),
		f("scores", tScores)},
	"audit_event": {f("event", tEventStr), f("severity", enum("info", "warning", "error", "critical")),
		f("source", tID), f("reason", strMax(1024)), f("subject", opt(strMax(256))), f("ref_id", opt(tBin16)),
		f("detail", tScalars)},
	"audit_head": {f("stream", strMax(128)), f("seq", tInt), f("hash", tBin32), f("time_ms", tInt)},
	"job_command": {f("job_id", tID), f("command", enum("start", "pause", "resume", "stop")),
		f("config", tSettings)},
	"registry_command": {f("command", enum("issue_tokens", "revoke", "rotate_key", "delete", "suspend", "reinstate")), f("device_id", opt(tID)),
		f("token_hashes", arrayOf(tBin32)), f("expires_ms", tInt), f("labels", tLabels),
		f("key_id", opt(tBin16))},
	"stored_model": {f("name", &ft{kind: fStr, n: 128, re: modelNameRe}),
		f("version", &ft{kind: fStr, n: 64, re: modelVersionRe}),
		f("format", enum("safetensors", "torch", "onnx")), f("tensors", tTensors), f("graph", opt(tBinAny)),
		f("metadata", tLabels)},
	"model_chunk": {f("inner_type", &ft{kind: fInner}), f("size", tInt1), f("offset", tInt), f("digest", tBin32),
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

// ValidateBody checks a parsed body against §7: the key set, then each value
// in listed order, then the cross-field rules, then (unless allowNonFinite)
// the finiteness of float tensors, in array order.
func ValidateBody(typ string, v Value, allowNonFinite bool) error {
	schema, ok := bodySchemas[typ]
	if !ok {
		return errf("schema", "type", "unknown body type %q", typ)
	}
	if v.Kind != KMap {
		return errf("schema", "body", "body is %s, not map", v.Kind)
	}
	keys := make([]string, len(schema))
	for i, d := range schema {
		keys[i] = d.name
	}
	if err := checkKeys(v, keys, "body"); err != nil {
		return err
	}
	for _, d := range schema {
		x, _ := v.Get(d.name)
		if err := check(d.t, x, "body."+d.name); err != nil {
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
		if get("command").S != "rotate_key" && get("key_id").Kind != KNil {
			return errf("schema", "body.key_id", "only rotate_key takes a key_id")
		}
	case "stored_model":
		tensors := get("tensors").Arr
		if len(tensors) == 0 {
			return errf("schema", "body.tensors", "a model needs at least one tensor")
		}
		for i, x := range tensors {
			if dtype, _ := x.Get("dtype"); dtype.S != "<f4" {
				return errf("tensor", joinIndex("body.tensors", i)+".dtype", "a stored model is float32 only")
			}
		}
		if (get("format").S == "onnx") != (get("graph").Kind != KNil) {
			return errf("schema", "body.graph", "an ONNX import carries its graph, and only an ONNX import")
		}
	}
	if tv, ok := v.Get("tensors"); ok && !allowNonFinite {
		for i, x := range tv.Arr {
			dtype, _ := x.Get("dtype")
			data, _ := x.Get("data")
			if !tensorFinite(dtype.S, data.Raw) {
				return errf("non_finite", joinIndex("body.tensors", i)+".data", "NaN or infinity in tensor")
			}
		}
	}
	return nil
}

func isNonNegInt(x Value) bool { return x.Kind == KInt && !x.Neg }

func checkScalar(x Value, path string) error {
	switch x.Kind {
	case KNil, KBool, KInt, KStr:
	case KFloat:
		if math.IsNaN(x.F) || math.IsInf(x.F, 0) {
			return errf("non_finite", path, "not finite")
		}
	default:
		return errf("schema", path, "not a scalar")
	}
	return nil
}

func check(t *ft, x Value, path string) error {
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
		return check(t.elem, x, path)
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
				if math.IsNaN(e.Val.F) || math.IsInf(e.Val.F, 0) {
					return errf("non_finite", p, "not finite")
				}
			case KInt:
			default:
				return errf("schema", p, "not a number")
			}
		}
	case fScores:
		if x.Kind != KMap {
			return errf("schema", path, "not a map")
		}
		for _, e := range x.Map {
			p := joinKey(path, e.Key)
			if !idRe.MatchString(e.Key) {
				return errf("schema", p, "not an id")
			}
			if err := check(tFloats, e.Val, p); err != nil {
				return err
			}
		}
	case fScalars, fSettings:
		if x.Kind != KMap {
			return errf("schema", path, "not a map")
		}
		for _, e := range x.Map {
			p := joinKey(path, e.Key)
			if t.kind == fSettings && e.Val.Kind == KMap {
				// One level of nesting: the inner map holds scalars only.
				if err := check(tScalars, e.Val, p); err != nil {
					return err
				}
				continue
			}
			if err := checkScalar(e.Val, p); err != nil {
				return err
			}
		}
	case fArray:
		if x.Kind != KArray {
			return errf("schema", path, "not an array")
		}
		for i, e := range x.Arr {
			if err := check(t.elem, e, joinIndex(path, i)); err != nil {
				return err
			}
		}
	case fTensors:
		if x.Kind != KArray {
			return errf("schema", path, "not an array")
		}
		names := make([]string, len(x.Arr))
		for i, e := range x.Arr {
			tn, err := CheckTensor(e, joinIndex(path, i))
			if err != nil {
				return err
			}
			names[i] = tn.Name
		}
		// Names are compared once every tensor passed its own checks.
		seen := map[string]bool{}
		for i, n := range names {
			if seen[n] {
				return errf("tensor", joinIndex(path, i)+".name", "duplicate tensor name %q", n)
			}
			seen[n] = true
		}
	case fInner:
		if x.Kind != KStr || x.S == "model_chunk" || bodySchemas[x.S] == nil {
			return errf("schema", path, "not a body type that may be chunked")
		}
	}
	return nil
}
