# cython: language_level=3
"""The Cython hot path: ModelInferRequest decoding and ModelInferResponse encoding by hand.

Design. The decoder walks the protobuf wire format with a narrow, typed boundary: every read goes
through a few ``cdef`` helpers (``_Decoder.varint/tag/length/skip``) that take a position and the end
of the enclosing message and check bounds themselves (the build turns Cython's bounds checks off).
Nothing is copied that does not have to be: each ``raw_input_contents`` entry is a ``memoryview``
slice of the request buffer, a single packed ``fp32_contents``/``fp64_contents`` run is an
``np.frombuffer`` view, other typed contents are decoded straight into one C buffer per field. The
encoder computes the exact size of the answer first, allocates one ``bytes`` object and writes tags,
varints and each output's data into it with one ``memcpy`` per output.

The pure-Python twin (``twin.py``, protobuf's upb parser) is the specification. Matched on purpose:
unknown fields of every wire type are skipped, groups included, nested at most 100 deep counting
messages (upb's depth limit); a known field number with the wrong wire type is an unknown field;
tags are at most 5 bytes and below 2**32, field number 0 and wire types 6/7 are errors; lengths of
2**31-1 or more are errors; singular scalars are last-one-wins, embedded messages that repeat are
merged, oneofs are last-one-wins; a map entry that carries any unknown field is dropped from the map
(upb moves it to the parent's unknown fields), a missing key is "" and a missing value gives None;
every occurrence of a string field must be valid UTF-8; int32/uint32 keep the low 32 bits of the
varint, bool is ``varint != 0``.

Known differences from the twin, all deliberate: ``raw_input_contents`` entries are memoryviews into
the request (the twin gives ``bytes`` copies) and a lone packed fp32/fp64 run is a read-only view;
the input must support the buffer protocol (the twin calls ``bytes(buf)``, which also takes e.g. an
``int``); error messages name the fault and its byte offset instead of protobuf's generic text; a raw
output that is an empty array of two or more dimensions is encoded (the twin's
``tensors.raw_from_array`` raises TypeError from ``memoryview.cast`` there); fp32 values keep their
exact bits both ways (the twin goes through Python floats, which quiets signaling NaNs). The module
refuses to import on big-endian hosts, where ``load_codec("auto")`` falls back to the twin.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

cimport cython

import operator
import sys

import numpy as np

from tensorwire.errors import InvalidArgument
from tensorwire.proto.datatypes import CONTENTS_FIELD_DTYPES, DATATYPES
from tensorwire.proto.messages import InferRequest, InputTensor, RequestedOutput
from tensorwire.proto.tensors import contents_from_array, serialize_bytes_tensor

if sys.byteorder != "little":
    raise ImportError("tensorwire.fastpath._wire supports little-endian hosts only")

# The decoder builds the message dataclasses without their __init__ (a Python-level call per object; the
# decode time this buys is in bench/results/decisions/codec.md)
# and without setattr (a type lookup per field): object.__new__ gives an instance whose slots are all NULL,
# and each slot is written at the offset its member descriptor records.
_new = object.__new__

cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset

cdef extern from "Python.h":
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member


cdef Py_ssize_t _slot(type cls, str name) except -1:
    descr = cls.__dict__[name]
    if type(descr).__name__ != "member_descriptor":
        raise TypeError(f"{cls.__name__}.{name} is not a __slots__ member")
    return (<PyMemberDescrObject*>descr).d_member.offset


cdef inline void _put(object obj, Py_ssize_t offset, object value):
    """Store ``value`` in the slot at ``offset`` of ``obj`` (a fresh instance: the slot holds NULL)."""
    cdef PyObject** slot = <PyObject**>((<char*><PyObject*>obj) + offset)
    Py_INCREF(value)
    Py_XDECREF(slot[0])
    slot[0] = <PyObject*>value


cdef Py_ssize_t R_MODEL_NAME = _slot(InferRequest, "model_name")
cdef Py_ssize_t R_MODEL_VERSION = _slot(InferRequest, "model_version")
cdef Py_ssize_t R_ID = _slot(InferRequest, "id")
cdef Py_ssize_t R_PARAMETERS = _slot(InferRequest, "parameters")
cdef Py_ssize_t R_INPUTS = _slot(InferRequest, "inputs")
cdef Py_ssize_t R_OUTPUTS = _slot(InferRequest, "outputs")
cdef Py_ssize_t R_RAW = _slot(InferRequest, "raw_input_contents")
cdef Py_ssize_t I_NAME = _slot(InputTensor, "name")
cdef Py_ssize_t I_DATATYPE = _slot(InputTensor, "datatype")
cdef Py_ssize_t I_SHAPE = _slot(InputTensor, "shape")
cdef Py_ssize_t I_PARAMETERS = _slot(InputTensor, "parameters")
cdef Py_ssize_t I_CONTENTS = _slot(InputTensor, "contents")
cdef Py_ssize_t O_NAME = _slot(RequestedOutput, "name")
cdef Py_ssize_t O_PARAMETERS = _slot(RequestedOutput, "parameters")

cdef enum:
    WT_VARINT = 0
    WT_I64 = 1
    WT_LEN = 2
    WT_SGROUP = 3
    WT_EGROUP = 4
    WT_I32 = 5
    MAX_DEPTH = 100           # upb's default: messages and groups nested below the top message
    MAX_LEN = 0x7FFFFFFF      # upb rejects lengths >= INT32_MAX
    F_BOOL = 1                # InferTensorContents field numbers
    F_INT = 2
    F_INT64 = 3
    F_UINT = 4
    F_UINT64 = 5
    F_FP32 = 6
    F_FP64 = 7
    F_BYTES = 8

# InferTensorContents, indexed by field number: name and decoded dtype.
_FIELDS = (None, "bool_contents", "int_contents", "int64_contents", "uint_contents",
           "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents")
_DTYPES = tuple(None if f is None else CONTENTS_FIELD_DTYPES[f] for f in _FIELDS)
_FIELD_NUMBER = {name: i for i, name in enumerate(_FIELDS) if name is not None}


cdef inline Py_ssize_t _itemsize(int field) noexcept nogil:
    """Bytes per decoded element of a numeric contents field."""
    if field == F_BOOL:
        return 1
    if field == F_INT or field == F_UINT or field == F_FP32:
        return 4
    return 8


cdef inline int _wire_type(int field) noexcept nogil:
    """Wire type of one unpacked element of a numeric contents field."""
    if field == F_FP32:
        return WT_I32
    if field == F_FP64:
        return WT_I64
    return WT_VARINT


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------

cdef struct Acc:
    # One numeric contents field of one input tensor, merged over every occurrence.
    char* data              # malloc'd elements, already in the decoded dtype
    Py_ssize_t count        # elements in data
    Py_ssize_t cap          # capacity of data, in elements
    Py_ssize_t view_off     # >= 0: a lone packed fixed-width run still in the request (zero copy)
    Py_ssize_t view_count


cdef int _acc_reserve(Acc* a, Py_ssize_t more, Py_ssize_t itemsize) except -1:
    """Room for ``more`` elements; counts are bounded by the request size, so no overflow."""
    cdef Py_ssize_t need = a.count + more
    cdef Py_ssize_t cap
    cdef char* data
    if need <= a.cap:
        return 0
    cap = max(need, 2 * a.cap, 16)
    data = <char*>realloc(a.data, cap * itemsize)
    if data == NULL:
        raise MemoryError()
    a.data = data
    a.cap = cap
    return 0


cdef int _acc_append(Acc* a, const uint8_t* base, const uint8_t* src, Py_ssize_t k,
                     Py_ssize_t itemsize) except -1:
    """Append ``k`` fixed-width elements, first copying a pending zero-copy run out of ``base``."""
    cdef Py_ssize_t cnt
    if a.view_off >= 0:  # only ever recorded into an empty accumulator
        cnt = a.view_count
        _acc_reserve(a, cnt, itemsize)
        memcpy(a.data, base + a.view_off, cnt * itemsize)
        a.count = cnt
        a.view_off = -1
    _acc_reserve(a, k, itemsize)
    memcpy(a.data + a.count * itemsize, src, k * itemsize)
    a.count += k
    return 0


cdef inline void _acc_store(Acc* a, int field, uint64_t v) noexcept nogil:
    """Store one varint as the field's dtype (room must be reserved); truncation as protobuf does."""
    if field == F_BOOL:
        (<uint8_t*>a.data)[a.count] = v != 0
    elif field == F_INT:
        (<int32_t*>a.data)[a.count] = <int32_t><uint32_t>v
    elif field == F_UINT:
        (<uint32_t*>a.data)[a.count] = <uint32_t>v
    else:  # F_INT64, F_UINT64: same bits
        (<uint64_t*>a.data)[a.count] = v
    a.count += 1


cdef inline int _read_varint(const uint8_t* b, Py_ssize_t* pos, Py_ssize_t end,
                             uint64_t* out) noexcept nogil:
    """0: read one varint; 1: it runs past ``end``; 2: longer than 10 bytes. ``pos`` moves on 0 only."""
    cdef Py_ssize_t p = pos[0]
    cdef uint64_t byte, result = 0
    cdef int shift = 0
    while True:
        if p >= end:
            return 1
        byte = b[p]
        p += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            pos[0] = p
            out[0] = result
            return 0
        shift += 7
        if shift == 70:
            return 2


# Large runs are walked without the GIL (other clients' requests go on meanwhile), small ones with it:
# releasing costs more than walking a few KB. See bench/results/memory/ (the --p99 figures).
cdef enum:
    NOGIL_BYTES = 65536


cdef int _count_fast(const uint8_t* b, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t* n) noexcept nogil:
    """Add one well-formed InferTensorContents occurrence's element counts to ``n`` (by field number).

    1 on anything unusual (a fault, an unknown field, a stray wire type): the caller then re-walks the
    input with ``_Decoder.count_checked``, which raises with the offset or skips exactly as it always did.
    """
    cdef uint32_t tag, field, wt
    cdef Py_ssize_t ln, p, size
    cdef uint64_t v = 0
    while pos < end:
        tag = b[pos]
        field = tag >> 3
        wt = tag & 7
        if tag >= 0x80 or field < F_BOOL or field > F_BYTES:
            return 1
        pos += 1
        if wt == WT_LEN:
            if _read_varint(b, &pos, end, &v) or v >= MAX_LEN or <Py_ssize_t>v > end - pos:
                return 1
            ln = <Py_ssize_t>v
            p = pos
            pos += ln
            if field == F_BYTES:
                n[field] += 1
            elif field >= F_FP32:
                size = _itemsize(field)
                if ln % size:
                    return 1
                n[field] += ln // size
            else:
                if ln and b[pos - 1] & 0x80:
                    return 1
                while p < pos:
                    if b[p] < 0x80:
                        p += 1
                    elif _read_varint(b, &p, pos, &v):
                        return 1
                    n[field] += 1
            continue
        if field == F_BYTES or <int>wt != _wire_type(field):
            return 1
        if wt == WT_VARINT:
            if _read_varint(b, &pos, end, &v):
                return 1
        else:
            size = _itemsize(field)
            if end - pos < size:
                return 1
            pos += size
        n[field] += 1
    return 0


cdef Py_ssize_t _store_varints(Acc* a, int field, const uint8_t* b, Py_ssize_t p,
                               Py_ssize_t stop) noexcept nogil:
    """Decode a packed varint run into ``a`` (room already reserved); -1, or where a bad varint starts."""
    cdef uint64_t v = 0
    cdef Py_ssize_t at
    while p < stop:
        if b[p] < 0x80:
            v = b[p]
            p += 1
        else:
            at = p
            if _read_varint(b, &p, stop, &v):
                return at
        _acc_store(a, field, v)
    return -1


cdef Py_ssize_t _terminators(const uint8_t* b, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """Varints in a packed run whose last byte ends one: the bytes below 0x80."""
    cdef Py_ssize_t p, count = 0
    for p in range(start, stop):
        count += b[p] < 0x80
    return count


@cython.final
cdef class _Decoder:
    """One request buffer and the bounded readers over it; positions are absolute byte offsets."""

    cdef const uint8_t* b
    cdef Py_ssize_t n
    cdef object mv          # memoryview of the request, format "B": raw contents are slices of it
    cdef Py_buffer view
    cdef bint have_view

    def __cinit__(self, buf):
        mv = memoryview(buf)
        if PyBytes_CheckExact(buf):
            pass  # what grpcio hands the deserializer: contiguous, format "B" already
        elif not mv.c_contiguous:
            mv = memoryview(mv.tobytes())
        elif mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        self.mv = mv
        PyObject_GetBuffer(mv, &self.view, PyBUF_SIMPLE)
        self.have_view = True
        self.b = <const uint8_t*>self.view.buf
        self.n = self.view.len

    def __dealloc__(self):
        if self.have_view:
            PyBuffer_Release(&self.view)

    # -- the typed boundary: every byte read goes through these ------------------------------------

    cdef int fail(self, str what, Py_ssize_t at) except -1:
        raise InvalidArgument(f"malformed ModelInferRequest: {what} at byte {at}")

    cdef inline int varint(self, Py_ssize_t* pos, Py_ssize_t end, uint64_t* out) except -1:
        """A varint of at most 10 bytes inside [pos, end); bits past 64 are dropped, like upb."""
        cdef int status = _read_varint(self.b, pos, end, out)
        if status == 1:
            return self.fail("truncated varint", pos[0])
        if status == 2:
            return self.fail("varint longer than 10 bytes", pos[0])
        return 0

    cdef inline int tag(self, Py_ssize_t* pos, Py_ssize_t end, uint32_t* out) except -1:
        """A field tag (caller guarantees pos < end): at most 5 bytes, below 2**32, field >= 1."""
        cdef Py_ssize_t at = pos[0]
        cdef uint64_t v = self.b[at]
        if v < 0x80:
            pos[0] = at + 1
        else:
            self.varint(pos, end, &v)
            if pos[0] - at > 5 or v > 0xFFFFFFFFu:
                return self.fail("invalid tag (more than 5 bytes or above 2**32)", at)
        if (v >> 3) == 0:
            return self.fail("field number 0", at)
        if (v & 7) > WT_I32:
            return self.fail(f"invalid wire type {v & 7}", at)
        out[0] = <uint32_t>v
        return 0

    cdef inline int length(self, Py_ssize_t* pos, Py_ssize_t end, Py_ssize_t* out) except -1:
        """The length of a length-delimited field, checked against the enclosing message."""
        cdef Py_ssize_t at = pos[0]
        cdef uint64_t v = 0
        self.varint(pos, end, &v)
        if v >= MAX_LEN:
            return self.fail(f"length {v} is 2 GiB or more", at)
        if <Py_ssize_t>v > end - pos[0]:
            return self.fail(
                f"length {v} runs past the end of the enclosing message ({end - pos[0]} bytes left)", at
            )
        out[0] = <Py_ssize_t>v
        return 0

    cdef int skip(self, Py_ssize_t* pos, Py_ssize_t end, uint32_t tag, Py_ssize_t at,
                  int depth) except -1:
        """Skip an unknown field of a message nested ``depth`` deep (groups included)."""
        cdef uint32_t wt = tag & 7
        cdef uint32_t inner = 0
        cdef uint64_t v = 0
        cdef Py_ssize_t ln = 0, inner_at
        if wt == WT_VARINT:
            self.varint(pos, end, &v)
        elif wt == WT_I64 or wt == WT_I32:
            ln = 8 if wt == WT_I64 else 4
            if end - pos[0] < ln:
                return self.fail(f"truncated fixed{8 * ln} field {tag >> 3}", at)
            pos[0] += ln
        elif wt == WT_LEN:
            self.length(pos, end, &ln)
            pos[0] += ln
        elif wt == WT_SGROUP:
            if depth >= MAX_DEPTH:
                return self.fail(f"messages and groups nested more than {MAX_DEPTH} deep", at)
            while True:
                if pos[0] >= end:
                    return self.fail(f"group of field {tag >> 3} is never closed", at)
                inner_at = pos[0]
                self.tag(pos, end, &inner)
                if (inner & 7) == WT_EGROUP:
                    if (inner >> 3) != (tag >> 3):
                        return self.fail(
                            f"end-group tag of field {inner >> 3} closes the group of field {tag >> 3}",
                            inner_at,
                        )
                    break
                self.skip(pos, end, inner, inner_at, depth + 1)
        else:
            return self.fail(f"end-group tag of field {tag >> 3} without a start-group", at)
        return 0

    cdef str text(self, Py_ssize_t start, Py_ssize_t ln, Py_ssize_t at, str what):
        """A proto3 string field: must be valid UTF-8, like upb checks it."""
        try:
            return PyUnicode_DecodeUTF8(<const char*>(self.b + start), ln, NULL)
        except UnicodeDecodeError as exc:
            self.fail(f"invalid UTF-8 in {what} (field at byte {at})", start + exc.start)

    # -- messages ------------------------------------------------------------------------------------

    cdef tuple head(self):
        """(model_name, model_version): the top level walked, every other field skipped unparsed."""
        cdef Py_ssize_t pos = 0, end = self.n, at, ln = 0
        cdef uint32_t tag = 0, field
        cdef str model_name = "", model_version = ""
        while pos < end:
            at = pos
            self.tag(&pos, end, &tag)
            field = tag >> 3
            if (tag & 7) != WT_LEN:
                self.skip(&pos, end, tag, at, 0)
                continue
            self.length(&pos, end, &ln)
            if field == 1:
                model_name = self.text(pos, ln, at, "model_name")
            elif field == 2:
                model_version = self.text(pos, ln, at, "model_version")
            pos += ln
        return model_name, model_version

    cdef object request(self, object check):
        cdef Py_ssize_t pos = 0, end = self.n, at, ln = 0, start
        cdef uint32_t tag = 0, field
        cdef str model_name = "", model_version = "", rid = ""
        cdef dict params = {}
        cdef list inputs = [], outputs = [], raw = []
        cdef list pending = []   # (input, [(start, end) of each contents occurrence]) in input order
        mv = self.mv
        while pos < end:
            at = pos
            self.tag(&pos, end, &tag)
            field = tag >> 3
            if (tag & 7) != WT_LEN or field > 7:
                self.skip(&pos, end, tag, at, 0)
                continue
            self.length(&pos, end, &ln)
            start = pos
            pos += ln
            if field == 7:
                raw.append(mv[start:pos])
            elif field == 5:
                inputs.append(self.input(start, pos, pending))
            elif field == 1:
                model_name = self.text(start, ln, at, "model_name")
            elif field == 2:
                model_version = self.text(start, ln, at, "model_version")
            elif field == 3:
                rid = self.text(start, ln, at, "id")
            elif field == 4:
                self.map_entry(start, pos, 1, params)
            else:
                outputs.append(self.output(start, pos))
        if pending:
            self.contents_of(pending, check)
        r = _new(InferRequest)
        _put(r, R_MODEL_NAME, model_name)
        _put(r, R_MODEL_VERSION, model_version)
        _put(r, R_ID, rid)
        _put(r, R_PARAMETERS, params)
        _put(r, R_INPUTS, inputs)
        _put(r, R_OUTPUTS, outputs)
        _put(r, R_RAW, raw)
        return r

    cdef int map_entry(self, Py_ssize_t pos, Py_ssize_t end, int depth, dict target) except -1:
        """One map<string, InferParameter> entry; dropped if it carries unknown fields, as upb does."""
        cdef Py_ssize_t at, ln = 0, start
        cdef uint32_t tag = 0, field
        cdef bint unknown = False
        cdef str key = ""
        value = None
        while pos < end:
            at = pos
            self.tag(&pos, end, &tag)
            field = tag >> 3
            if (tag & 7) == WT_LEN and (field == 1 or field == 2):
                self.length(&pos, end, &ln)
                start = pos
                pos += ln
                if field == 1:
                    key = self.text(start, ln, at, "parameter name")
                else:
                    value = self.param(start, pos, depth + 1, value)
            else:
                self.skip(&pos, end, tag, at, depth)
                unknown = True
        if not unknown:
            target[key] = value
        return 0

    cdef object param(self, Py_ssize_t pos, Py_ssize_t end, int depth, object cur):
        """InferParameter merged into ``cur`` (None: no oneof member set): last member wins."""
        cdef Py_ssize_t at, ln = 0
        cdef uint32_t tag = 0, field, wt
        cdef uint64_t v = 0
        cdef double d
        while pos < end:
            at = pos
            self.tag(&pos, end, &tag)
            field = tag >> 3
            wt = tag & 7
            if wt == WT_VARINT and (field == 1 or field == 2 or field == 5):
                self.varint(&pos, end, &v)
                if field == 1:
                    cur = True if v else False
                elif field == 2:
                    cur = <int64_t>v
                else:
                    cur = v
            elif wt == WT_LEN and field == 3:
                self.length(&pos, end, &ln)
                cur = self.text(pos, ln, at, "string_param")
                pos += ln
            elif wt == WT_I64 and field == 4:
                if end - pos < 8:
                    self.fail("truncated double_param", at)
                memcpy(&d, self.b + pos, 8)
                pos += 8
                cur = d
            else:
                self.skip(&pos, end, tag, at, depth)
        return cur

    cdef object output(self, Py_ssize_t pos, Py_ssize_t end):
        cdef Py_ssize_t at, ln = 0, start
        cdef uint32_t tag = 0, field
        cdef str name = ""
        cdef dict params = {}
        while pos < end:
            at = pos
            self.tag(&pos, end, &tag)
            field = tag >> 3
            if (tag & 7) == WT_LEN and (field == 1 or field == 2):
                self.length(&pos, end, &ln)
                start = pos
                pos += ln
                if field == 1:
                    name = self.text(start, ln, at, "output name")
                else:
                    self.map_entry(start, pos, 2, params)
            else:
                self.skip(&pos, end, tag, at, 1)
        o = _new(RequestedOutput)
        _put(o, O_NAME, name)
        _put(o, O_PARAMETERS, params)
        return o

    cdef object input(self, Py_ssize_t pos, Py_ssize_t end, list pending):
        """One InferInputTensor; its contents occurrences are only noted in ``pending``, for later."""
        cdef Py_ssize_t at, ln = 0, start
        cdef uint32_t tag = 0, field, wt
        cdef uint64_t v = 0
        cdef str name = "", datatype = ""
        cdef list shape = []
        cdef dict params = {}
        cdef list ranges = None
        while pos < end:
            at = pos
            self.tag(&pos, end, &tag)
            field = tag >> 3
            wt = tag & 7
            if field == 3 and wt == WT_VARINT:
                self.varint(&pos, end, &v)
                shape.append(<int64_t>v)
                continue
            if wt != WT_LEN or field > 5:
                self.skip(&pos, end, tag, at, 1)
                continue
            self.length(&pos, end, &ln)
            start = pos
            pos += ln
            if field == 5:
                if ranges is None:
                    ranges = []
                ranges.append((start, pos))
            elif field == 1:
                name = self.text(start, ln, at, "input name")
            elif field == 2:
                datatype = self.text(start, ln, at, "datatype")
            elif field == 3:
                while start < pos:
                    self.varint(&start, pos, &v)
                    shape.append(<int64_t>v)
            else:
                self.map_entry(start, pos, 2, params)
        t = _new(InputTensor)
        _put(t, I_NAME, name)
        _put(t, I_DATATYPE, datatype)
        _put(t, I_SHAPE, tuple(shape))
        _put(t, I_PARAMETERS, params)
        _put(t, I_CONTENTS, {})  # what a check sees; contents_of puts the decoded dict in its place
        if ranges is not None:
            pending.append((t, ranges))
        return t

    cdef int contents_of(self, list pending, object check) except -1:
        """Typed contents, once the whole message is known to be well formed: with a ``check``, every
        occurrence is first walked and counted (a structural fault raises here, before the check), then
        ``check([(input, {field: count}), ...])`` runs once, and only then is anything allocated."""
        if check is not None:
            counted = [(t, self.count(ranges)) for t, ranges in pending]
            counted = [(t, c) for t, c in counted if c]
            if counted:
                check(counted)
        for t, ranges in pending:
            _put(t, I_CONTENTS, self.decode_contents(ranges))
        return 0

    cdef dict count(self, list ranges):
        """{field name: elements} over every contents occurrence of one input, nothing allocated; large
        inputs are counted without the GIL, anything unusual is re-walked by ``count_checked``."""
        cdef Py_ssize_t n[9]
        cdef Py_ssize_t pos, end
        cdef int i, unusual = 0
        for i in range(9):
            n[i] = 0
        for pos, end in ranges:
            if end - pos >= NOGIL_BYTES:
                with nogil:
                    unusual = _count_fast(self.b, pos, end, n)
            else:
                unusual = _count_fast(self.b, pos, end, n)
            if unusual:
                return self.count_checked(ranges)
        return {_FIELDS[i]: n[i] for i in range(F_BOOL, F_BYTES + 1) if n[i]}

    cdef dict count_checked(self, list ranges):
        """``count`` for inputs with a fault or an unknown field: raises with the offset, or skips."""
        cdef Py_ssize_t n[9]
        cdef Py_ssize_t pos, end, at, ln = 0, p, size
        cdef uint32_t tag = 0, field, wt
        cdef uint64_t v = 0
        cdef int i
        for i in range(9):
            n[i] = 0
        for pos, end in ranges:
            while pos < end:
                at = pos
                self.tag(&pos, end, &tag)
                field = tag >> 3
                wt = tag & 7
                if F_BOOL <= field <= F_FP64 and wt == WT_LEN:
                    self.length(&pos, end, &ln)
                    p = pos
                    pos += ln
                    if field >= F_FP32:
                        size = _itemsize(field)
                        if ln % size:
                            self.fail(f"packed {_FIELDS[field]} of {ln} bytes is not a multiple of {size}", at)
                        n[field] += ln // size
                        continue
                    if ln and self.b[pos - 1] & 0x80:
                        self.fail(f"truncated varint in packed {_FIELDS[field]}", pos - 1)
                    while p < pos:
                        if self.b[p] < 0x80:
                            p += 1
                        elif _read_varint(self.b, &p, pos, &v):
                            self.varint(&p, pos, &v)  # raises with the offset
                        n[field] += 1
                    continue
                if F_BOOL <= field <= F_FP64 and <int>wt == _wire_type(field):
                    if wt == WT_VARINT:
                        self.varint(&pos, end, &v)
                    else:
                        size = _itemsize(field)
                        if end - pos < size:
                            self.fail(f"truncated {_FIELDS[field]} element", at)
                        pos += size
                    n[field] += 1
                    continue
                if field == F_BYTES and wt == WT_LEN:
                    self.length(&pos, end, &ln)
                    pos += ln
                    n[field] += 1
                    continue
                self.skip(&pos, end, tag, at, 2)
        return {_FIELDS[i]: n[i] for i in range(F_BOOL, F_BYTES + 1) if n[i]}

    cdef dict decode_contents(self, list ranges):
        """One input's contents: every occurrence merged, as the twin's dict."""
        cdef Acc accs[8]
        cdef int i
        cdef list items = None
        for i in range(8):
            accs[i].data = NULL
            accs[i].count = 0
            accs[i].cap = 0
            accs[i].view_off = -1
            accs[i].view_count = 0
        try:
            for start, stop in ranges:
                items = self.contents(start, stop, accs, items)
            return self.finish(accs, items)
        finally:
            for i in range(8):
                free(accs[i].data)

    cdef list contents(self, Py_ssize_t pos, Py_ssize_t end, Acc* accs, list items):
        """One occurrence of InferTensorContents, merged into ``accs``/``items`` (bytes_contents)."""
        cdef Py_ssize_t at, ln = 0, start, size
        cdef uint32_t tag = 0, field, wt
        cdef uint64_t v = 0
        while pos < end:
            at = pos
            self.tag(&pos, end, &tag)
            field = tag >> 3
            wt = tag & 7
            if F_BOOL <= field <= F_FP64:
                if wt == WT_LEN:
                    self.length(&pos, end, &ln)
                    start = pos
                    pos += ln
                    if field >= F_FP32:
                        self.packed_fixed(&accs[field], field, start, ln, at)
                    else:
                        self.packed_varint(&accs[field], field, start, pos)
                    continue
                if <int>wt == _wire_type(field):
                    if wt == WT_VARINT:
                        self.varint(&pos, end, &v)
                        _acc_reserve(&accs[field], 1, _itemsize(field))
                        _acc_store(&accs[field], field, v)
                    else:
                        size = _itemsize(field)
                        if end - pos < size:
                            self.fail(f"truncated {_FIELDS[field]} element", at)
                        _acc_append(&accs[field], self.b, self.b + pos, 1, size)
                        pos += size
                    continue
            elif field == F_BYTES and wt == WT_LEN:
                self.length(&pos, end, &ln)
                if items is None:
                    items = []
                items.append(PyBytes_FromStringAndSize(<const char*>(self.b + pos), ln))
                pos += ln
                continue
            self.skip(&pos, end, tag, at, 2)
        return items

    cdef int packed_fixed(self, Acc* a, int field, Py_ssize_t start, Py_ssize_t ln,
                          Py_ssize_t at) except -1:
        cdef Py_ssize_t size = _itemsize(field)
        cdef Py_ssize_t k = ln // size
        if ln % size:
            return self.fail(f"packed {_FIELDS[field]} of {ln} bytes is not a multiple of {size}", at)
        if k == 0:
            return 0
        if a.count == 0 and a.view_off < 0:
            a.view_off = start
            a.view_count = k
            return 0
        return _acc_append(a, self.b, self.b + start, k, size)

    cdef int packed_varint(self, Acc* a, int field, Py_ssize_t start, Py_ssize_t stop) except -1:
        """A packed run of varints, decoded straight into the field's C buffer."""
        cdef Py_ssize_t p, count = 0
        cdef uint64_t v = 0
        cdef const uint8_t* b = self.b
        if start == stop:
            return 0
        if b[stop - 1] & 0x80:
            return self.fail(f"truncated varint in packed {_FIELDS[field]}", stop - 1)
        if stop - start < NOGIL_BYTES:
            count = _terminators(b, start, stop)
            _acc_reserve(a, count, _itemsize(field))
            p = _store_varints(a, field, b, start, stop)
        else:
            with nogil:
                count = _terminators(b, start, stop)
            _acc_reserve(a, count, _itemsize(field))
            with nogil:
                p = _store_varints(a, field, b, start, stop)
        if p >= 0:
            return self.varint(&p, stop, &v)  # raises with the offset
        return 0

    cdef dict finish(self, Acc* accs, list items):
        """The twin's contents dict: only non-empty fields, numpy arrays (bytes as a list)."""
        cdef dict out = {}
        cdef int field
        cdef Acc* a
        for field in range(F_BOOL, F_FP64 + 1):
            a = &accs[field]
            if a.view_off >= 0:
                out[_FIELDS[field]] = np.frombuffer(self.mv, _DTYPES[field], a.view_count, a.view_off)
            elif a.count:
                ba = PyByteArray_FromStringAndSize(a.data, a.count * _itemsize(field))
                out[_FIELDS[field]] = np.frombuffer(ba, _DTYPES[field])
        if items is not None:
            out["bytes_contents"] = items
        return out


def peek_infer_request(buf):
    """(model_name, model_version) of ModelInferRequest wire bytes, no tensor decoded (see twin)."""
    return _Decoder(buf).head()


def decode_infer_request(buf, check=None):
    """Decode ModelInferRequest wire bytes (any buffer); raw contents are views into ``buf``.

    ``check([(input, {field: count}), ...])`` runs once for the inputs with typed contents before any of
    them is allocated (twin.ContentsCheck), so a caller refuses a hostile count at the cost of one walk.
    """
    return _Decoder(buf).request(check)


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _vsize(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline Py_ssize_t _ldsize(Py_ssize_t n) noexcept nogil:
    """Size of a length-delimited field with a one-byte tag (every field number here is < 16)."""
    return 1 + _vsize(<uint64_t>n) + n


cdef inline uint8_t* _wvarint(uint8_t* p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <uint8_t>(v | 0x80)
        v >>= 7
        p += 1
    p[0] = <uint8_t>v
    return p + 1


cdef inline uint8_t* _whead(uint8_t* p, uint8_t tag, Py_ssize_t n) noexcept nogil:
    p[0] = tag
    return _wvarint(p + 1, <uint64_t>n)


cdef inline uint8_t* _wld(uint8_t* p, uint8_t tag, const void* data, Py_ssize_t n) noexcept nogil:
    p = _whead(p, tag, n)
    memcpy(p, data, n)
    return p + n


cdef inline uint8_t* _wstr(uint8_t* p, uint8_t tag, bytes s):
    """A singular proto3 string: omitted when empty."""
    if len(s):
        p = _wld(p, tag, PyBytes_AS_STRING(s), len(s))
    return p


cdef inline Py_ssize_t _strsize(bytes s):
    return _ldsize(len(s)) if len(s) else 0


cdef bytes _utf8(obj, bint allow_none):
    """A string field as protobuf accepts it: str, UTF-8 bytes, or (singular fields) None."""
    if isinstance(obj, str):
        return (<str>obj).encode("utf-8")
    if isinstance(obj, bytes):
        (<bytes>obj).decode("utf-8")
        return obj
    if obj is None and allow_none:
        return b""
    raise TypeError(f"expected str for a string field, got {type(obj).__name__}")


cdef uint64_t _int64_bits(obj) except? 0:
    """An int64 field value (anything with __index__), range-checked like protobuf."""
    cdef object i = operator.index(obj)
    if not -(1 << 63) <= i < (1 << 63):
        raise ValueError(f"Value out of range: {i}")
    return <uint64_t><int64_t>i


cdef enum:
    P_NONE = 0
    P_BOOL = 1
    P_INT64 = 2
    P_STRING = 3
    P_DOUBLE = 4
    P_UINT64 = 5


@cython.final
cdef class _Param:
    """One map entry of the response parameters, sized; kinds follow twin._set_params."""
    cdef bytes key
    cdef int kind
    cdef uint64_t u        # bool / int64 bits / uint64
    cdef double d
    cdef bytes s
    cdef Py_ssize_t value_size, entry_size

    cdef uint8_t* write(self, uint8_t* p):
        p = _whead(p, 0x22, self.entry_size)
        p = _wld(p, 0x0A, PyBytes_AS_STRING(self.key), len(self.key))
        p = _whead(p, 0x12, self.value_size)
        if self.kind == P_BOOL or self.kind == P_INT64 or self.kind == P_UINT64:
            p[0] = <uint8_t>(self.kind << 3)
            p = _wvarint(p + 1, self.u)
        elif self.kind == P_DOUBLE:
            p[0] = 0x21
            memcpy(p + 1, &self.d, 8)
            p += 9
        elif self.kind == P_STRING:
            p = _wld(p, 0x1A, PyBytes_AS_STRING(self.s), len(self.s))
        return p


cdef _Param _param(key, value):
    cdef _Param prm = _Param.__new__(_Param)
    prm.key = _utf8(key, False)
    prm.kind = P_NONE
    prm.value_size = 0
    if isinstance(value, bool):
        prm.kind = P_BOOL
        prm.u = 1 if value else 0
    elif isinstance(value, int):
        if value >= (1 << 63):
            if value >= (1 << 64):
                raise ValueError(f"Value out of range: {value}")
            prm.kind = P_UINT64
            prm.u = <uint64_t>value
        else:
            prm.kind = P_INT64
            prm.u = _int64_bits(value)
    elif isinstance(value, float):
        prm.kind = P_DOUBLE
        prm.d = value
        prm.value_size = 9
    elif isinstance(value, str):
        prm.kind = P_STRING
        prm.s = _utf8(value, False)
        prm.value_size = _ldsize(len(prm.s))
    if prm.kind == P_BOOL or prm.kind == P_INT64 or prm.kind == P_UINT64:
        prm.value_size = 1 + _vsize(prm.u)
    prm.entry_size = _ldsize(len(prm.key)) + _ldsize(prm.value_size)
    return prm


cdef Py_ssize_t _packed_payload(int field, const uint8_t* data, Py_ssize_t n) noexcept nogil:
    """Bytes of the packed encoding of ``n`` elements of a numeric contents field."""
    cdef Py_ssize_t i, size = 0
    if field == F_BOOL:
        return n
    if field == F_FP32 or field == F_FP64:
        return n * _itemsize(field)
    for i in range(n):
        if field == F_INT:
            size += _vsize(<uint64_t><int64_t>(<const int32_t*>data)[i])
        elif field == F_UINT:
            size += _vsize((<const uint32_t*>data)[i])
        else:
            size += _vsize((<const uint64_t*>data)[i])
    return size


cdef uint8_t* _write_packed(uint8_t* p, int field, const uint8_t* data, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if field == F_FP32 or field == F_FP64:
        memcpy(p, data, n * _itemsize(field))
        return p + n * _itemsize(field)
    for i in range(n):
        if field == F_BOOL:
            p[0] = data[i] != 0
            p += 1
        elif field == F_INT:
            p = _wvarint(p, <uint64_t><int64_t>(<const int32_t*>data)[i])
        elif field == F_UINT:
            p = _wvarint(p, (<const uint32_t*>data)[i])
        else:
            p = _wvarint(p, (<const uint64_t*>data)[i])
    return p


@cython.final
cdef class _Output:
    """One InferOutputTensor, sized, with its raw data or its typed contents."""
    cdef bytes name, datatype
    cdef list shape             # int64 bit patterns
    cdef Py_ssize_t shape_size  # packed payload
    cdef object raw             # raw mode: contiguous array (or bytes for BYTES); None in typed mode
    cdef Py_ssize_t raw_size
    cdef int field              # typed mode: contents field number
    cdef object values          # typed mode: contiguous numpy array, or list of bytes for BYTES
    cdef Py_ssize_t n           # typed numeric: element count
    cdef Py_ssize_t payload     # typed numeric: packed payload bytes
    cdef Py_ssize_t contents_size, tensor_size
    cdef bint elsewhere         # written into shared memory: metadata only (and an empty raw entry)

    cdef uint8_t* write_tensor(self, uint8_t* p) except NULL:
        cdef Py_buffer view
        p = _whead(p, 0x2A, self.tensor_size)
        p = _wstr(p, 0x0A, self.name)
        p = _wstr(p, 0x12, self.datatype)
        if self.shape:
            p = _whead(p, 0x1A, self.shape_size)
            for dim in self.shape:
                p = _wvarint(p, <uint64_t>dim)
        if self.raw is not None or self.elsewhere:
            return p
        p = _whead(p, 0x2A, self.contents_size)
        if self.field == F_BYTES:
            for item in self.values:
                p = _wld(p, 0x42, PyBytes_AS_STRING(item), len(<bytes>item))
        elif self.n:
            PyObject_GetBuffer(self.values, &view, PyBUF_SIMPLE)
            try:
                p = _whead(p, <uint8_t>((self.field << 3) | WT_LEN), self.payload)
                p = _write_packed(p, self.field, <const uint8_t*>view.buf, self.n)
            finally:
                PyBuffer_Release(&view)
        return p


cdef _Output _output(out, bint raw):
    """Size one output; the order of checks (and so of exceptions) follows twin.build_infer_response."""
    cdef _Output o = _Output.__new__(_Output)
    cdef Py_buffer view
    cdef uint64_t bits
    o.name = _utf8(out.name, True)
    o.datatype = _utf8(out.datatype, True)
    o.shape = []
    o.shape_size = 0
    if out.shape is not None:
        for dim in out.shape:
            bits = _int64_bits(dim)
            o.shape.append(bits)
            o.shape_size += _vsize(bits)
    o.tensor_size = _strsize(o.name) + _strsize(o.datatype)
    if o.shape:
        o.tensor_size += _ldsize(o.shape_size)
    o.elsewhere = out.elsewhere
    if o.elsewhere:  # as twin.build_infer_response: an empty raw entry in raw mode, no contents in typed mode
        if raw:
            o.raw = b""
            o.raw_size = 0
        return o
    dt = DATATYPES[out.datatype]
    if raw:
        # what tensors.raw_from_array gives, taken as a buffer without memoryview.cast, which
        # refuses zero-size arrays of more than one dimension
        if dt.name == "BYTES":
            o.raw = serialize_bytes_tensor(out.data)
        else:
            o.raw = np.ascontiguousarray(out.data, dtype=dt.numpy)
        PyObject_GetBuffer(o.raw, &view, PyBUF_SIMPLE)
        o.raw_size = view.len
        PyBuffer_Release(&view)
        return o
    field_name, values = contents_from_array(out.data, dt)
    o.field = _FIELD_NUMBER[field_name]
    if o.field == F_BYTES:
        o.values = [bytes(x) for x in values]
        o.contents_size = 0
        for item in o.values:
            o.contents_size += _ldsize(len(<bytes>item))
    else:
        o.values = np.ascontiguousarray(values, dtype=_DTYPES[o.field])
        o.n = len(o.values)
        o.contents_size = 0
        if o.n:
            PyObject_GetBuffer(o.values, &view, PyBUF_SIMPLE)
            try:
                o.payload = _packed_payload(o.field, <const uint8_t*>view.buf, o.n)
            finally:
                PyBuffer_Release(&view)
            o.contents_size = _ldsize(o.payload)
    o.tensor_size += _ldsize(o.contents_size)  # typed mode always sets contents, even when empty
    return o


@cython.final
cdef class _Response:
    """A ModelInferResponse planned to the byte: ``size`` first, then ``write`` fills exactly that."""
    cdef bytes model_name, model_version, id
    cdef list params, outputs
    cdef Py_ssize_t size

    cdef uint8_t* write(self, uint8_t* p) except NULL:
        cdef _Param prm
        cdef _Output o
        cdef Py_buffer view
        p = _wstr(p, 0x0A, self.model_name)
        p = _wstr(p, 0x12, self.model_version)
        p = _wstr(p, 0x1A, self.id)
        for prm in self.params:
            p = prm.write(p)
        for o in self.outputs:
            p = o.write_tensor(p)
        for o in self.outputs:
            if o.raw is not None:
                PyObject_GetBuffer(o.raw, &view, PyBUF_SIMPLE)
                try:
                    if view.len != o.raw_size:
                        raise RuntimeError("an output array changed size while being encoded")
                    p = _wld(p, 0x32, view.buf, view.len)
                finally:
                    PyBuffer_Release(&view)
        return p


cdef _Response _plan(resp):
    cdef _Response r = _Response.__new__(_Response)
    cdef _Param prm
    cdef _Output o
    cdef bint raw = resp.raw
    r.model_name = _utf8(resp.model_name, True)
    r.model_version = _utf8(resp.model_version, True)
    r.id = _utf8(resp.id, True)
    r.size = _strsize(r.model_name) + _strsize(r.model_version) + _strsize(r.id)
    r.params = []
    for key, value in resp.parameters.items():
        prm = _param(key, value)
        r.params.append(prm)
        r.size += _ldsize(prm.entry_size)
    r.outputs = []
    for out in resp.outputs:
        o = _output(out, raw)
        r.outputs.append(o)
        r.size += _ldsize(o.tensor_size)
        if raw:
            r.size += _ldsize(o.raw_size)
    return r


cdef bytes _finish(bytes out, uint8_t* start, uint8_t* p):
    if p - start != len(out):
        raise SystemError(f"tensorwire _wire: wrote {p - start} bytes into a buffer of {len(out)}")
    return out


def encode_infer_response(resp):
    """ModelInferResponse wire bytes: one allocation of the exact size, one copy per output."""
    cdef _Response r = _plan(resp)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, r.size)
    cdef uint8_t* start = <uint8_t*>PyBytes_AS_STRING(out)
    return _finish(out, start, r.write(start))


def encode_stream_response(resp, error=""):
    """ModelStreamInferResponse wire bytes: an answer, or an error message for one stream request."""
    cdef bytes err = _utf8(error, True)
    cdef _Response r = None if resp is None else _plan(resp)
    cdef Py_ssize_t size = _strsize(err) + (0 if r is None else _ldsize(r.size))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t* start = <uint8_t*>PyBytes_AS_STRING(out)
    cdef uint8_t* p = _wstr(start, 0x0A, err)
    if r is not None:
        p = r.write(_whead(p, 0x12, r.size))
    return _finish(out, start, p)
