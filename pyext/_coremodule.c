/*
 * bitpress._core: the CPython binding of the C core. It takes buffers (numpy arrays, bytes,
 * Arrow buffers) that the Python layer (bitpress/kernels.py) has shaped and allocated, checks
 * their sizes, releases the GIL and runs one core call per batch. No numpy C API needed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "bp_core.h"

static PyObject *ErrorFactory;	/* bitpress.errors._from_core, set by _set_error_factory */

static PyObject *
raise_status(bp_status st, long long a, long long b, long long row)
{
	char		msg[256];
	char		full[320];
	PyObject   *exc;

	bp_error_message(msg, sizeof(msg), st, a, b);
	if (row >= 0)
		snprintf(full, sizeof(full), "%s (row %lld)", msg, row);
	else
		snprintf(full, sizeof(full), "%s", msg);
	if (ErrorFactory == NULL)
	{
		PyErr_SetString(PyExc_ValueError, full);
		return NULL;
	}
	/* bitpress.errors._from_core(message, status, sqlstate) picks the class for the status */
	exc = PyObject_CallFunction(ErrorFactory, "sis", full, (int) st, bp_error_sqlstate(st));
	if (exc == NULL)
		return NULL;
	PyErr_SetObject((PyObject *) Py_TYPE(exc), exc);
	Py_DECREF(exc);
	return NULL;
}

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
	int			flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);

	if (PyObject_GetBuffer(obj, view, flags) < 0)
	{
		PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s buffer", what,
					 writable ? " writable" : "");
		return -1;
	}
	return 0;
}

/* view's bytes at a 4-byte boundary: view->buf itself, or a copy in *copy (PyMem_Free it);
 * NULL with MemoryError set when the copy cannot be made */
static const void *
aligned4(const Py_buffer *view, void **copy)
{
	*copy = NULL;
	if (((uintptr_t) view->buf & 3) == 0)
		return view->buf;
	*copy = PyMem_Malloc(view->len ? (size_t) view->len : 1);
	if (*copy == NULL)
	{
		PyErr_NoMemory();
		return NULL;
	}
	memcpy(*copy, view->buf, (size_t) view->len);
	return *copy;
}

/* obj's bytes (a read-only buffer named what in errors) at a 4-byte boundary: get_buffer, then
 * aligned4; NULL with an exception set. The caller releases view and frees *copy. */
static const void *
get_aligned(PyObject *obj, Py_buffer *view, void **copy, const char *what)
{
	*copy = NULL;
	if (get_buffer(obj, view, 0, what) < 0)
		return NULL;
	return aligned4(view, copy);
}

/*
 * binarize_into(x: float32 buffer, n, dim, thresholds, out: uint8 buffer)
 * thresholds: None, dim floats shared by all rows, or n * dim floats (one row per vector)
 */
static PyObject *
core_binarize_into(PyObject *self, PyObject *args)
{
	PyObject   *xo,
			   *to,
			   *oo;
	Py_ssize_t	n,
				dim;
	Py_buffer	xb = {0},
				tb = {0},
				ob = {0};
	bp_status	st;
	size_t		bad_row = 0,
				bad_index = 0;
	size_t		nbytes;
	size_t		thr_stride = 0;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OnnOO", &xo, &n, &dim, &to, &oo))
		return NULL;
	if (n < 0 || dim < 0)
		return PyErr_Format(PyExc_ValueError, "n and dim must be >= 0");
	if (dim == 0)
		return raise_status(BP_ERR_EMPTY, 0, 0, -1);
	if (dim > BP_MAX_DIM)
		return raise_status(BP_ERR_TOO_LARGE, dim, 0, -1);
	nbytes = bp_code_bytes((size_t) dim);
	if (get_buffer(xo, &xb, 0, "x") < 0)
		goto done;
	if (to != Py_None && get_buffer(to, &tb, 0, "thresholds") < 0)
		goto done;
	if (get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	if ((size_t) xb.len != (size_t) n * (size_t) dim * sizeof(float))
	{
		PyErr_Format(PyExc_ValueError, "x holds %zd bytes, expected %zd x %zd float32",
					 xb.len, n, dim);
		goto done;
	}
	if (to != Py_None)
	{
		size_t		tlen = (size_t) tb.len / sizeof(float);

		if (tlen == (size_t) dim)
			thr_stride = 0;
		else if (n > 1 && tlen == (size_t) n * (size_t) dim)
			thr_stride = (size_t) dim;
		else
		{
			raise_status(BP_ERR_DIM_MISMATCH, dim, (long long) tlen, -1);
			goto done;
		}
	}
	if ((size_t) ob.len != (size_t) n * nbytes)
	{
		PyErr_Format(PyExc_ValueError, "out holds %zd bytes, expected %zd", ob.len,
					 (Py_ssize_t) (n * nbytes));
		goto done;
	}
	Py_BEGIN_ALLOW_THREADS
		st = bp_binarize_batch((const float *) xb.buf, (size_t) n, (size_t) dim, (size_t) dim,
							   to != Py_None ? (const float *) tb.buf : NULL, thr_stride,
							   (uint8_t *) ob.buf, nbytes, &bad_row, &bad_index);
	Py_END_ALLOW_THREADS
	if (st != BP_OK)
	{
		raise_status(st, (long long) bad_index, 0,
					 n > 1 && (st == BP_ERR_NONFINITE_VALUE || thr_stride) ? (long long) bad_row : -1);
		goto done;
	}
	result = Py_NewRef(Py_None);
done:
	if (xb.obj)
		PyBuffer_Release(&xb);
	if (tb.obj)
		PyBuffer_Release(&tb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/*
 * hamming_into(a, na, b, nb, nbytes, out: uint64 buffer)
 * na == nb: row-wise pairs; na == 1 or nb == 1: one against many.
 */
static PyObject *
core_hamming_into(PyObject *self, PyObject *args)
{
	PyObject   *ao,
			   *bo,
			   *oo;
	Py_ssize_t	na,
				nb,
				nbytes;
	Py_buffer	ab = {0},
				bb = {0},
				ob = {0};
	Py_ssize_t	n;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OnOnnO", &ao, &na, &bo, &nb, &nbytes, &oo))
		return NULL;
	if (na < 0 || nb < 0 || nbytes < 0)
		return PyErr_Format(PyExc_ValueError, "sizes must be >= 0");
	if (na != nb && na != 1 && nb != 1)
		return PyErr_Format(PyExc_ValueError, "cannot pair %zd codes with %zd codes", na, nb);
	n = na > nb ? na : nb;
	if (na == 0 || nb == 0)
		n = 0;
	if (get_buffer(ao, &ab, 0, "a") < 0 || get_buffer(bo, &bb, 0, "b") < 0 ||
		get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	if (ab.len != na * nbytes || bb.len != nb * nbytes)
	{
		PyErr_Format(PyExc_ValueError, "code buffers hold %zd and %zd bytes, expected %zd and %zd",
					 ab.len, bb.len, na * nbytes, nb * nbytes);
		goto done;
	}
	if ((size_t) ob.len != (size_t) n * sizeof(uint64_t))
	{
		PyErr_Format(PyExc_ValueError, "out holds %zd bytes, expected %zd uint64", ob.len, n);
		goto done;
	}
	Py_BEGIN_ALLOW_THREADS
		if (na == nb)
		bp_hamming_pairs((const uint8_t *) ab.buf, (const uint8_t *) bb.buf, (size_t) n,
						 (size_t) nbytes, (size_t) nbytes, (size_t) nbytes, (uint64_t *) ob.buf);
	else if (na == 1)
		bp_hamming_one_to_many((const uint8_t *) ab.buf, (const uint8_t *) bb.buf, (size_t) n,
							   (size_t) nbytes, (size_t) nbytes, (uint64_t *) ob.buf);
	else
		bp_hamming_one_to_many((const uint8_t *) bb.buf, (const uint8_t *) ab.buf, (size_t) n,
							   (size_t) nbytes, (size_t) nbytes, (uint64_t *) ob.buf);
	Py_END_ALLOW_THREADS
		result = Py_NewRef(Py_None);
done:
	if (ab.obj)
		PyBuffer_Release(&ab);
	if (bb.obj)
		PyBuffer_Release(&bb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/* hamming_with(impl_name, a: bytes-like, b: bytes-like) -> int: one path, for tests */
static PyObject *
core_hamming_with(PyObject *self, PyObject *args)
{
	const char *name;
	Py_buffer	ab = {0},
				bb = {0};
	int			impl;
	uint64_t	d;

	if (!PyArg_ParseTuple(args, "sy*y*", &name, &ab, &bb))
		return NULL;
	impl = bp_impl_from_name(name);
	if (impl < 0 || !bp_impl_supported((bp_impl) impl) || ab.len != bb.len)
	{
		PyBuffer_Release(&ab);
		PyBuffer_Release(&bb);
		if (impl >= 0 && ab.len != bb.len)
			return raise_status(BP_ERR_BIT_LENGTH_MISMATCH, ab.len * 8, bb.len * 8, -1);
		return raise_status(BP_ERR_UNKNOWN_IMPL, 0, 0, -1);
	}
	d = bp_hamming_with((bp_impl) impl, (const uint8_t *) ab.buf, (const uint8_t *) bb.buf,
						(size_t) ab.len);
	PyBuffer_Release(&ab);
	PyBuffer_Release(&bb);
	return PyLong_FromUnsignedLongLong(d);
}

/* raise_error(status, a, b): raise the exception the core reports for a status */
static PyObject *
core_raise_error(PyObject *self, PyObject *args)
{
	int			st;
	long long	a,
				b;

	if (!PyArg_ParseTuple(args, "iLL", &st, &a, &b))
		return NULL;
	return raise_status((bp_status) st, a, b, -1);
}

static PyObject *
core_set_impl(PyObject *self, PyObject *args)
{
	const char *name;
	int			impl;

	if (!PyArg_ParseTuple(args, "s", &name))
		return NULL;
	impl = bp_impl_from_name(name);
	if (impl == -2 || bp_set_impl((bp_impl) impl) != BP_OK)
		return raise_status(BP_ERR_UNKNOWN_IMPL, 0, 0, -1);
	return PyUnicode_FromString(bp_impl_name(bp_get_impl()));
}

static PyObject *
core_get_impl(PyObject *self, PyObject *unused)
{
	return PyUnicode_FromString(bp_impl_name(bp_get_impl()));
}

static PyObject *
core_supported_impls(PyObject *self, PyObject *unused)
{
	PyObject   *list = PyList_New(0);

	if (list == NULL)
		return NULL;
	for (int i = 0; i < BP_IMPL_COUNT; i++)
	{
		if (bp_impl_supported((bp_impl) i))
		{
			PyObject   *s = PyUnicode_FromString(bp_impl_name((bp_impl) i));

			if (s == NULL || PyList_Append(list, s) < 0)
			{
				Py_XDECREF(s);
				Py_DECREF(list);
				return NULL;
			}
			Py_DECREF(s);
		}
	}
	return list;
}

static PyObject *
core_set_error_factory(PyObject *self, PyObject *factory)
{
	Py_XSETREF(ErrorFactory, Py_NewRef(factory));
	Py_RETURN_NONE;
}

/* ---- codebooks ---- */

/* Parses a stored codebook held by obj. *copy is set when the buffer had to be copied to be
 * 4-byte aligned; free it with PyMem_Free after use (cb points into it or into view). */
static int
get_codebook(PyObject *obj, Py_buffer *view, void **copy, bp_codebook *cb)
{
	const void *buf = get_aligned(obj, view, copy, "codebook");
	int			problem = 0;
	bp_status	st;

	if (buf == NULL)
		return -1;
	st = bp_codebook_parse(buf, (size_t) view->len, cb, &problem);
	if (st != BP_OK)
	{
		raise_status(st, problem, 0, -1);
		return -1;
	}
	return 0;
}

/* Releases what get_codebook / get_ffn held. */
static void
release_blob(Py_buffer *view, void *copy)
{
	if (view->obj)
		PyBuffer_Release(view);
	PyMem_Free(copy);
}

/* codebook_shape(blob) -> (dims, components, bits, has_levels): checks a stored codebook */
static PyObject *
core_codebook_shape(PyObject *self, PyObject *args)
{
	PyObject   *bo;
	Py_buffer	bb = {0};
	void	   *copy;
	bp_codebook cb;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "O", &bo))
		return NULL;
	if (get_codebook(bo, &bb, &copy, &cb) == 0)
		result = Py_BuildValue("(IIIi)", cb.dims, cb.components, cb.bits, cb.base != NULL || cb.rabitq);
	release_blob(&bb, copy);
	return result;
}

/* encode_into(blob, x: float32 buffer, n, dim, out: uint8 buffer of n * code bytes) */
static PyObject *
core_encode_into(PyObject *self, PyObject *args)
{
	PyObject   *bo,
			   *xo,
			   *oo;
	Py_ssize_t	n,
				dim;
	Py_buffer	bb = {0},
				xb = {0},
				ob = {0};
	void	   *copy = NULL;
	float	   *scratch = NULL;
	bp_codebook cb;
	bp_status	st;
	size_t		bad_row = 0,
				bad_index = 0,
				nbytes;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OOnnO", &bo, &xo, &n, &dim, &oo))
		return NULL;
	if (n < 0 || dim < 0)
		return PyErr_Format(PyExc_ValueError, "n and dim must be >= 0");
	if (get_codebook(bo, &bb, &copy, &cb) < 0)
		goto done;
	if (dim == 0)
	{
		raise_status(BP_ERR_EMPTY, 0, 0, -1);
		goto done;
	}
	if ((size_t) dim != cb.dims)
	{
		raise_status(BP_ERR_CODEBOOK_DIM_MISMATCH, dim, cb.dims, -1);
		goto done;
	}
	nbytes = bp_code_bytes(cb.bits);
	if (get_buffer(xo, &xb, 0, "x") < 0 || get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	if ((size_t) xb.len != (size_t) n * (size_t) dim * sizeof(float) ||
		(size_t) ob.len != (size_t) n * nbytes)
	{
		PyErr_Format(PyExc_ValueError, "x or out has the wrong size for %zd rows", n);
		goto done;
	}
	scratch = PyMem_Malloc(bp_codebook_scratch_floats(&cb) * sizeof(float));
	if (scratch == NULL)
	{
		PyErr_NoMemory();
		goto done;
	}
	Py_BEGIN_ALLOW_THREADS
		st = bp_codebook_encode_batch(&cb, (const float *) xb.buf, (size_t) n, (size_t) dim,
									  (size_t) dim, (uint8_t *) ob.buf, nbytes, scratch,
									  &bad_row, &bad_index);
	Py_END_ALLOW_THREADS
	if (st != BP_OK)
	{
		raise_status(st, (long long) bad_index, 0, n > 1 ? (long long) bad_row : -1);
		goto done;
	}
	result = Py_NewRef(Py_None);
done:
	PyMem_Free(scratch);
	release_blob(&bb, copy);
	if (xb.obj)
		PyBuffer_Release(&xb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/* asym_scores_into(blob, q: float32 buffer, codes: uint8 buffer, n, out: float64 buffer) */
static PyObject *
core_asym_scores_into(PyObject *self, PyObject *args)
{
	PyObject   *bo,
			   *qo,
			   *co,
			   *oo;
	Py_ssize_t	n;
	Py_buffer	bb = {0},
				qb = {0},
				cbuf = {0},
				ob = {0};
	void	   *copy = NULL;
	void	   *work = NULL;
	bp_codebook cb;
	bp_status	st;
	size_t		bad_index = 0,
				nbytes,
				dim;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OOOnO", &bo, &qo, &co, &n, &oo))
		return NULL;
	if (n < 0)
		return PyErr_Format(PyExc_ValueError, "n must be >= 0");
	if (get_codebook(bo, &bb, &copy, &cb) < 0)
		goto done;
	nbytes = bp_code_bytes(cb.bits);
	if (get_buffer(qo, &qb, 0, "query") < 0 || get_buffer(co, &cbuf, 0, "codes") < 0 ||
		get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	dim = (size_t) qb.len / sizeof(float);
	if (dim != cb.dims)
	{
		raise_status(dim == 0 ? BP_ERR_EMPTY : BP_ERR_CODEBOOK_DIM_MISMATCH, (long long) dim, cb.dims, -1);
		goto done;
	}
	if ((size_t) cbuf.len != (size_t) n * nbytes || (size_t) ob.len != (size_t) n * sizeof(double))
	{
		raise_status(BP_ERR_BIT_LENGTH_MISMATCH, n ? (long long) (cbuf.len / n) * 8 : 0, cb.bits, -1);
		goto done;
	}
	work = PyMem_Malloc(bp_codebook_score_bytes(&cb));
	if (work == NULL)
	{
		PyErr_NoMemory();
		goto done;
	}
	{
		bp_score_query sq;
		size_t		bad_row = 0;

		st = bp_codebook_score_prep(&cb, (const float *) qb.buf, dim, work, &sq, &bad_index);
		if (st != BP_OK)
		{
			raise_status(st, (long long) bad_index, 0, -1);
			goto done;
		}
		Py_BEGIN_ALLOW_THREADS
			st = bp_codebook_score_scan(&sq, (const uint8_t *) cbuf.buf, (size_t) n, nbytes,
										(double *) ob.buf, &bad_row);
		Py_END_ALLOW_THREADS
		if (st != BP_OK)
		{
			raise_status(st, (long long) bad_row, 0, -1);
			goto done;
		}
	}
	result = Py_NewRef(Py_None);
done:
	PyMem_Free(work);
	release_blob(&bb, copy);
	if (qb.obj)
		PyBuffer_Release(&qb);
	if (cbuf.obj)
		PyBuffer_Release(&cbuf);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/*
 * topk_into(keys, kind, n, k, out_index: int64 buffer, out_key: float64 buffer) -> count
 * kind "u" (uint64 keys) or "d" (float64 keys); the k smallest, ascending by (key, index).
 * hamming_topk_into(q, codes, n, nbytes, k, out_index, out_key) -> count: fused scan.
 */
static PyObject *
topk_common(Py_buffer *keys, char kind, const uint8_t *q, Py_ssize_t n, Py_ssize_t nbytes,
			Py_ssize_t k, PyObject *io, PyObject *ko)
{
	Py_buffer	ib = {0},
				kb = {0};
	bp_topk_entry *heap = NULL;
	size_t		count = 0;
	PyObject   *result = NULL;

	if (k < 1)
		return PyErr_Format(PyExc_ValueError, "k must be at least 1");
	if (get_buffer(io, &ib, 1, "out_index") < 0 || get_buffer(ko, &kb, 1, "out_key") < 0)
		goto done;
	if (k > n)
		k = n;
	if ((size_t) ib.len < (size_t) k * 8 || (size_t) kb.len < (size_t) k * 8)
	{
		PyErr_Format(PyExc_ValueError, "out buffers hold fewer than k entries");
		goto done;
	}
	heap = PyMem_Malloc(((size_t) k + 1) * sizeof(bp_topk_entry));
	if (heap == NULL)
	{
		PyErr_NoMemory();
		goto done;
	}
	Py_BEGIN_ALLOW_THREADS
		if (kind == 'u')
			count = bp_topk_smallest_u64((const uint64_t *) keys->buf, (size_t) n, (size_t) k, heap);
		else if (kind == 'd')
			count = bp_topk_smallest_f64((const double *) keys->buf, (size_t) n, (size_t) k, heap);
		else
			count = bp_hamming_topk(q, (const uint8_t *) keys->buf, (size_t) n, (size_t) nbytes,
									(size_t) nbytes, (size_t) k, heap);
		for (size_t i = 0; i < count; i++)
		{
			((int64_t *) ib.buf)[i] = (int64_t) heap[i].index;
			((double *) kb.buf)[i] = heap[i].key;
		}
	Py_END_ALLOW_THREADS
	result = PyLong_FromSize_t(count);
done:
	PyMem_Free(heap);
	if (ib.obj)
		PyBuffer_Release(&ib);
	if (kb.obj)
		PyBuffer_Release(&kb);
	return result;
}

static PyObject *
core_topk_into(PyObject *self, PyObject *args)
{
	PyObject   *keyo,
			   *io,
			   *ko,
			   *result;
	const char *kind;
	Py_ssize_t	n,
				k;
	Py_buffer	keyb = {0};

	if (!PyArg_ParseTuple(args, "OsnnOO", &keyo, &kind, &n, &k, &io, &ko))
		return NULL;
	if ((kind[0] != 'u' && kind[0] != 'd') || kind[1] != '\0')
		return PyErr_Format(PyExc_ValueError, "kind must be 'u' or 'd'");
	if (n < 0 || get_buffer(keyo, &keyb, 0, "keys") < 0)
		return n < 0 ? PyErr_Format(PyExc_ValueError, "n must be >= 0") : NULL;
	if ((size_t) keyb.len != (size_t) n * 8)
	{
		PyBuffer_Release(&keyb);
		return PyErr_Format(PyExc_ValueError, "keys must hold n 8-byte values");
	}
	result = topk_common(&keyb, kind[0], NULL, n, 0, k, io, ko);
	PyBuffer_Release(&keyb);
	return result;
}

static PyObject *
core_hamming_topk_into(PyObject *self, PyObject *args)
{
	PyObject   *qo,
			   *co,
			   *io,
			   *ko,
			   *result = NULL;
	Py_ssize_t	n,
				nbytes,
				k;
	Py_buffer	qb = {0},
				cbuf = {0};

	if (!PyArg_ParseTuple(args, "OOnnnOO", &qo, &co, &n, &nbytes, &k, &io, &ko))
		return NULL;
	if (n < 0 || nbytes < 1)
		return PyErr_Format(PyExc_ValueError, "n must be >= 0 and nbytes >= 1");
	if (get_buffer(qo, &qb, 0, "q") < 0 || get_buffer(co, &cbuf, 0, "codes") < 0)
		goto done;
	if (qb.len != nbytes)
	{
		raise_status(BP_ERR_BIT_LENGTH_MISMATCH, (long long) qb.len * 8, (long long) nbytes * 8, -1);
		goto done;
	}
	if ((size_t) cbuf.len != (size_t) n * (size_t) nbytes)
	{
		PyErr_Format(PyExc_ValueError, "codes must hold n * nbytes bytes");
		goto done;
	}
	result = topk_common(&cbuf, 'h', (const uint8_t *) qb.buf, n, nbytes, k, io, ko);
done:
	if (qb.obj)
		PyBuffer_Release(&qb);
	if (cbuf.obj)
		PyBuffer_Release(&cbuf);
	return result;
}

/* ---- Tensor-Train cores ---- */

/* The cores of one tensor, held for one call: buffers, aligned copies where needed. */
typedef struct TTArgs
{
	int			d;
	Py_buffer	views[BP_TT_MAX_CORES];
	void	   *copies[BP_TT_MAX_CORES];
	bp_tt		tt;
} TTArgs;

static void
release_tt(TTArgs *t)
{
	int			k;

	for (k = 0; k < t->d; k++)
	{
		if (t->views[k].obj)
			PyBuffer_Release(&t->views[k]);
		PyMem_Free(t->copies[k]);
	}
	t->d = 0;
}

/* cores: a sequence of float32 buffers; shapes: an int64 buffer of len(cores) x 4 */
static int
get_tt(PyObject *cores, PyObject *shapes, int check_values, TTArgs *t)
{
	PyObject   *seq;
	Py_buffer	sb = {0};
	const float *ptrs[BP_TT_MAX_CORES];
	size_t		lens[BP_TT_MAX_CORES];
	Py_ssize_t	d;
	int			problem = 0,
				bad_core = 0,
				k,
				rc = -1;
	bp_status	st;

	memset(t, 0, sizeof(*t));
	seq = PySequence_Fast(cores, "cores must be a sequence of float32 buffers");
	if (seq == NULL)
		return -1;
	d = PySequence_Fast_GET_SIZE(seq);
	if (d < 1 || d > BP_TT_MAX_CORES)
	{
		raise_status(BP_ERR_MALFORMED_TT, d < 1 ? BP_TT_NO_CORES : BP_TT_TOO_MANY_CORES,
					 d < 1 ? 0 : BP_TT_MAX_CORES, -1);
		goto done;
	}
	if (get_buffer(shapes, &sb, 0, "shapes") < 0)
		goto done;
	if ((size_t) sb.len != (size_t) d * 4 * sizeof(int64_t))
	{
		PyErr_Format(PyExc_ValueError, "shapes must hold %zd x 4 int64 values", d);
		goto done;
	}
	for (k = 0; k < d; k++)
	{
		Py_buffer  *v = &t->views[k];

		t->d = k + 1;
		if (get_buffer(PySequence_Fast_GET_ITEM(seq, k), v, 0, "a core") < 0)
			goto done;
		lens[k] = (size_t) v->len / sizeof(float);
		if ((size_t) v->len % sizeof(float) != 0)
			lens[k] = (size_t) -1;	/* never equal to a shape's product */
		ptrs[k] = aligned4(v, &t->copies[k]);
		if (ptrs[k] == NULL)
			goto done;
	}
	st = bp_tt_init(&t->tt, (int) d, (const int64_t *) sb.buf, ptrs, lens, check_values, &problem,
					&bad_core);
	if (st != BP_OK)
	{
		raise_status(st, problem, bad_core, -1);
		goto done;
	}
	rc = 0;
done:
	if (sb.obj)
		PyBuffer_Release(&sb);
	Py_DECREF(seq);
	if (rc < 0)
		release_tt(t);
	return rc;
}

static float *
alloc_floats(size_t n)
{
	float	   *p = PyMem_Malloc((n ? n : 1) * sizeof(float));

	if (p == NULL)
		PyErr_NoMemory();
	return p;
}

/* tt_shape(cores, shapes) -> (rows, cols, matvec_cost, prefers_dense): checks the cores */
static PyObject *
core_tt_shape(PyObject *self, PyObject *args)
{
	PyObject   *co,
			   *so,
			   *result;
	TTArgs		t;

	if (!PyArg_ParseTuple(args, "OO", &co, &so))
		return NULL;
	if (get_tt(co, so, 1, &t) < 0)
		return NULL;
	result = Py_BuildValue("(KKKi)", (unsigned long long) t.tt.rows, (unsigned long long) t.tt.cols,
						   (unsigned long long) bp_tt_matvec_cost(&t.tt),
						   bp_tt_prefers_dense(&t.tt));
	release_tt(&t);
	return result;
}

/*
 * tt_into(cores, shapes, what, i, j, x, nvec, out, checked=0) -> None or float
 *   what 0: the whole tensor into out (rows * cols float32)
 *   what 1: row i into out (cols float32)
 *   what 2: element (i, j), returned
 *   what 3: x (nvec * rows float32) @ W into out (nvec * cols float32)
 * checked = 1: the caller has had these exact cores checked by tt_shape and kept them
 * unchanged, so their values are not scanned again (shapes are, always).
 */
static PyObject *
core_tt_into(PyObject *self, PyObject *args)
{
	PyObject   *co,
			   *so,
			   *xo,
			   *oo;
	int			what,
				checked = 0;
	unsigned long long i,
				j;
	Py_ssize_t	nvec;
	Py_buffer	xb = {0},
				ob = {0};
	TTArgs		t;
	float	   *work = NULL;
	float		value = 0.0f;
	size_t		bad_row = 0,
				bad_index = 0,
				want = 0;
	bp_status	st = BP_OK;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OOiKKOnO|p", &co, &so, &what, &i, &j, &xo, &nvec, &oo, &checked))
		return NULL;
	if (what < 0 || what > 3 || nvec < 0)
		return PyErr_Format(PyExc_ValueError, "bad tt_into arguments");
	if (get_tt(co, so, !checked, &t) < 0)
		return NULL;
	if (what == 0)
		want = t.tt.rows * t.tt.cols;
	else if (what == 1)
		want = t.tt.cols;
	else if (what == 3)
		want = (size_t) nvec * t.tt.cols;
	if (what != 2)
	{
		if (get_buffer(oo, &ob, 1, "out") < 0)
			goto done;
		if ((size_t) ob.len != want * sizeof(float))
		{
			PyErr_Format(PyExc_ValueError, "out must hold %zu float32 values", want);
			goto done;
		}
	}
	if (what == 3)
	{
		if (get_buffer(xo, &xb, 0, "x") < 0)
			goto done;
		if ((size_t) xb.len != (size_t) nvec * t.tt.rows * sizeof(float))
		{
			raise_status(BP_ERR_TT_INPUT_DIM,
						 nvec ? (long long) ((size_t) xb.len / sizeof(float) / (size_t) nvec) : 0,
						 (long long) t.tt.rows, -1);
			goto done;
		}
	}
	work = alloc_floats(what == 3 ? bp_tt_matvec_work(&t.tt) :
						what == 2 ? bp_tt_element_work(&t.tt) : bp_tt_row_work(&t.tt));
	if (work == NULL)
		goto done;
	Py_BEGIN_ALLOW_THREADS
		switch (what)
		{
			case 0:
				st = bp_tt_reconstruct(&t.tt, (float *) ob.buf, work, &bad_index);
				break;
			case 1:
				st = bp_tt_row(&t.tt, i, (float *) ob.buf, work);
				break;
			case 2:
				st = bp_tt_element(&t.tt, i, j, &value, work);
				break;
			default:
				st = bp_tt_matvec(&t.tt, (const float *) xb.buf, (size_t) nvec, t.tt.rows,
								  (float *) ob.buf, t.tt.cols, work, &bad_row, &bad_index);
				break;
		}
	Py_END_ALLOW_THREADS
	if (st == BP_ERR_TT_INDEX)
	{
		int			row_bad = i >= t.tt.rows;

		raise_status(st, (long long) (row_bad ? i : j),
					 (long long) (row_bad ? t.tt.rows : t.tt.cols), -1);
		goto done;
	}
	if (st != BP_OK)
	{
		raise_status(st, (long long) bad_index, 0, nvec > 1 ? (long long) bad_row : -1);
		goto done;
	}
	result = what == 2 ? PyFloat_FromDouble(value) : Py_NewRef(Py_None);
done:
	PyMem_Free(work);
	release_tt(&t);
	if (xb.obj)
		PyBuffer_Release(&xb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/* dense_matvec_into(w, rows, cols, x, nvec, out): x (nvec x rows) @ w (rows x cols), float32 */
static PyObject *
core_dense_matvec_into(PyObject *self, PyObject *args)
{
	PyObject   *wo,
			   *xo,
			   *oo;
	Py_ssize_t	rows,
				cols,
				nvec;
	Py_buffer	wb = {0},
				xb = {0},
				ob = {0};
	size_t		bad_row = 0,
				bad_index = 0;
	bp_status	st;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OnnOnO", &wo, &rows, &cols, &xo, &nvec, &oo))
		return NULL;
	if (rows < 1 || cols < 1 || nvec < 0)
		return PyErr_Format(PyExc_ValueError, "rows and cols must be >= 1, nvec >= 0");
	if (get_buffer(wo, &wb, 0, "w") < 0 || get_buffer(xo, &xb, 0, "x") < 0 ||
		get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	if ((size_t) wb.len != (size_t) rows * cols * sizeof(float) ||
		(size_t) ob.len != (size_t) nvec * cols * sizeof(float) || ((uintptr_t) wb.buf & 3) != 0)
	{
		PyErr_Format(PyExc_ValueError, "w or out has the wrong size or alignment");
		goto done;
	}
	if ((size_t) xb.len != (size_t) nvec * rows * sizeof(float))
	{
		raise_status(BP_ERR_TT_INPUT_DIM,
					 nvec ? (long long) ((size_t) xb.len / sizeof(float) / (size_t) nvec) : 0,
					 (long long) rows, -1);
		goto done;
	}
	Py_BEGIN_ALLOW_THREADS
		st = bp_dense_matvec((const float *) wb.buf, (uint64_t) rows, (uint64_t) cols,
							 (const float *) xb.buf, (size_t) nvec, (size_t) rows,
							 (float *) ob.buf, (size_t) cols, &bad_row, &bad_index);
	Py_END_ALLOW_THREADS
	if (st != BP_OK)
	{
		raise_status(st, (long long) bad_index, 0, nvec > 1 ? (long long) bad_row : -1);
		goto done;
	}
	result = Py_NewRef(Py_None);
done:
	if (wb.obj)
		PyBuffer_Release(&wb);
	if (xb.obj)
		PyBuffer_Release(&xb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/* ---- feed-forward layers ---- */

/* Parses a stored layer held by obj, as get_codebook does for codebooks. */
static int
get_ffn(PyObject *obj, Py_buffer *view, void **copy, bp_ffn *f)
{
	const void *buf = get_aligned(obj, view, copy, "layer");
	int			problem = 0;
	bp_status	st;

	if (buf == NULL)
		return -1;
	st = bp_ffn_parse(buf, (size_t) view->len, f, &problem);
	if (st != BP_OK)
	{
		raise_status(st, problem, 0, -1);
		return -1;
	}
	return 0;
}

/*
 * ffn_into(blob, x, nvec, dim, out, mode, k) -> neurons computed in total
 *   mode 0: dense; 1: sparse, the k neurons the predictor ranks highest; 2: sparse, the
 *   neurons above their stored thresholds; 3: sparse, the k neurons whose exact activation
 *   ranks highest. x: nvec * dim float32, out: nvec * d float32.
 */
static PyObject *
core_ffn_into(PyObject *self, PyObject *args)
{
	PyObject   *bo,
			   *xo,
			   *oo;
	Py_ssize_t	nvec,
				dim;
	int			mode;
	long long	k;
	Py_buffer	bb = {0},
				xb = {0},
				ob = {0};
	void	   *copy = NULL;
	float	   *scratch = NULL;
	bp_ffn		f;
	bp_status	st = BP_OK;
	size_t		bad_index = 0,
				total = 0,
				v = 0;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OOnnOiL", &bo, &xo, &nvec, &dim, &oo, &mode, &k))
		return NULL;
	if (nvec < 0 || dim < 0 || mode < 0 || mode > 3)
		return PyErr_Format(PyExc_ValueError, "bad ffn_into arguments");
	if (get_ffn(bo, &bb, &copy, &f) < 0)
		goto done;
	if ((mode == 1 || mode == 3) && (k < 1 || (unsigned long long) k > f.h))
	{
		raise_status(BP_ERR_FFN_K, k, f.h, -1);
		goto done;
	}
	if ((size_t) dim != f.d)
	{
		raise_status(BP_ERR_FFN_INPUT_DIM, dim, f.d, -1);
		goto done;
	}
	if (get_buffer(xo, &xb, 0, "x") < 0 || get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	if ((size_t) xb.len != (size_t) nvec * dim * sizeof(float) ||
		(size_t) ob.len != (size_t) nvec * f.d * sizeof(float))
	{
		PyErr_Format(PyExc_ValueError, "x or out has the wrong size for %zd vectors", nvec);
		goto done;
	}
	scratch = PyMem_Malloc(bp_ffn_scratch_floats(&f) * sizeof(float));
	if (scratch == NULL)
	{
		PyErr_NoMemory();
		goto done;
	}
	Py_BEGIN_ALLOW_THREADS
		for (v = 0; v < (size_t) nvec; v++)
		{
			const float *x = (const float *) xb.buf + v * dim;
			float	   *y = (float *) ob.buf + v * f.d;
			size_t		n = f.h;

			st = mode == 0 ? bp_ffn_dense(&f, x, dim, y, scratch, &bad_index) :
				bp_ffn_sparse(&f, x, dim, mode == 2 ? 0 : k,
							  mode == 3 ? BP_FFN_SELECT_EXACT : BP_FFN_SELECT_PREDICTOR,
							  y, scratch, &n, &bad_index);
			if (st != BP_OK)
				break;
			total += n;
		}
	Py_END_ALLOW_THREADS
	if (st != BP_OK)
	{
		raise_status(st, (long long) bad_index, 0, nvec > 1 ? (long long) v : -1);
		goto done;
	}
	result = PyLong_FromSize_t(total);
done:
	PyMem_Free(scratch);
	release_blob(&bb, copy);
	if (xb.obj)
		PyBuffer_Release(&xb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/* segment_checksum(ids, codes) -> int: bp_segment_checksum of two bytes-like objects, as a
 * signed 64-bit integer (the form PostgreSQL's bigint and DuckDB's BIGINT store) */
static PyObject *
core_segment_checksum(PyObject *self, PyObject *args)
{
	Py_buffer	ib = {0},
				cb = {0};
	uint64_t	h;

	if (!PyArg_ParseTuple(args, "y*y*", &ib, &cb))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	h = bp_segment_checksum(ib.buf, (size_t) ib.len, cb.buf, (size_t) cb.len);
	Py_END_ALLOW_THREADS
	PyBuffer_Release(&ib);
	PyBuffer_Release(&cb);
	return PyLong_FromLongLong((long long) (int64_t) h);
}

/* half_to_float_into(halves, out): IEEE binary16 to float32 (pgvector's halfvec in the core) */
static PyObject *
core_half_to_float_into(PyObject *self, PyObject *args)
{
	PyObject   *ho,
			   *oo;
	Py_buffer	hb = {0},
				ob = {0};
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OO", &ho, &oo))
		return NULL;
	if (get_buffer(ho, &hb, 0, "halves") < 0 || get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	if (hb.len % 2 != 0 || (size_t) ob.len != (size_t) hb.len * 2 || ((uintptr_t) hb.buf & 1) != 0 ||
		((uintptr_t) ob.buf & 3) != 0)
	{
		PyErr_Format(PyExc_ValueError, "out must hold one aligned float32 per aligned half");
		goto done;
	}
	bp_half_to_float((const uint16_t *) hb.buf, (size_t) hb.len / 2, (float *) ob.buf);
	result = Py_NewRef(Py_None);
done:
	if (hb.obj)
		PyBuffer_Release(&hb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/* ffn_shape(blob) -> (d, h, r, activation, int8, thresholds, offsets): checks a stored layer */
static PyObject *
core_ffn_shape(PyObject *self, PyObject *args)
{
	PyObject   *bo;
	Py_buffer	bb = {0};
	void	   *copy = NULL;
	bp_ffn		f;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "O", &bo))
		return NULL;
	if (get_ffn(bo, &bb, &copy, &f) == 0)
		result = Py_BuildValue("(IIIiiii)", f.d, f.h, f.r, f.activation, f.w1q != NULL, f.thr != NULL,
							   f.c != NULL);
	release_blob(&bb, copy);
	return result;
}

/* activation(kind, x float32 buffer, out float32 buffer): the C core's activation, elementwise */
static PyObject *
core_activation_into(PyObject *self, PyObject *args)
{
	int			kind;
	PyObject   *xo,
			   *oo;
	Py_buffer	xb = {0},
				ob = {0};
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "iOO", &kind, &xo, &oo))
		return NULL;
	if (kind < 0 || kind >= BP_ACT_COUNT)
		return PyErr_Format(PyExc_ValueError, "unknown activation %d", kind);
	if (get_buffer(xo, &xb, 0, "x") < 0 || get_buffer(oo, &ob, 1, "out") < 0)
		goto done;
	if (xb.len != ob.len || xb.len % sizeof(float))
	{
		PyErr_SetString(PyExc_ValueError, "x and out must be float32 buffers of one size");
		goto done;
	}
	for (Py_ssize_t t = 0; t < xb.len / (Py_ssize_t) sizeof(float); t++)
		((float *) ob.buf)[t] = bp_activation(kind, ((const float *) xb.buf)[t]);
	result = Py_NewRef(Py_None);
done:
	if (xb.obj)
		PyBuffer_Release(&xb);
	if (ob.obj)
		PyBuffer_Release(&ob);
	return result;
}

/* ---- IVF + RaBitQ (bp_ivf.c); bitpress/ivf.py shapes the numpy arrays ---- */

/* views[i] of objs[i], sizes checked: bytes[i] each (writable where writable[i]); -1 on error */
static int
ivf_views(int n, PyObject **objs, Py_buffer *views, const size_t *bytes, const int *writable,
		  const char *const *names)
{
	for (int i = 0; i < n; i++)
	{
		if (get_buffer(objs[i], &views[i], writable[i], names[i]) < 0)
			return -1;
		if ((size_t) views[i].len != bytes[i] || ((uintptr_t) views[i].buf & 7) != 0)
		{
			PyErr_Format(PyExc_ValueError, "%s must be an 8-byte aligned buffer of %zu bytes",
						 names[i], bytes[i]);
			return -1;
		}
	}
	return 0;
}

static void
ivf_release(int n, Py_buffer *views)
{
	for (int i = 0; i < n; i++)
		if (views[i].obj)
			PyBuffer_Release(&views[i]);
}

/* ivf_kmeans_into(x float32[n*dim], n, dim, k, iters, seed, spherical, out float32[k*dim]) */
static PyObject *
core_ivf_kmeans_into(PyObject *self, PyObject *args)
{
	PyObject   *objs[2];
	Py_buffer	v[2] = {{0}};
	Py_ssize_t	n,
				dim,
				k;
	int			iters,
				spherical;
	unsigned long long seed;
	void	   *scratch = NULL;
	bp_status	st = BP_OK;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OnnniKpO", &objs[0], &n, &dim, &k, &iters, &seed, &spherical,
						  &objs[1]))
		return NULL;
	if (n < 0 || dim <= 0 || k <= 0 || k > n || iters < 0)
		return PyErr_Format(PyExc_ValueError, "k-means needs 0 < k <= n rows and dim > 0");
	{
		size_t		bytes[2] = {(size_t) n * dim * 4, (size_t) k * dim * 4};
		int			w[2] = {0, 1};
		const char *names[2] = {"x", "out"};

		if (ivf_views(2, objs, v, bytes, w, names) < 0)
			goto done;
	}
	scratch = PyMem_Malloc(bp_kmeans_scratch_bytes(n, k, dim));
	if (scratch == NULL)
	{
		PyErr_NoMemory();
		goto done;
	}
	Py_BEGIN_ALLOW_THREADS
	st = bp_kmeans(v[0].buf, n, dim, k, iters, seed, spherical, v[1].buf, scratch, NULL, NULL);
	Py_END_ALLOW_THREADS
	if (st != BP_OK)
		raise_status(st, 0, 0, -1);
	else
		result = Py_NewRef(Py_None);
done:
	PyMem_Free(scratch);
	ivf_release(2, v);
	return result;
}

/* ivf_normalize_into(x float32[n*dim], n, dim): each row scaled to unit length in place, as
 * the index does (bp_ivf_normalize; zero rows stay zero) */
static PyObject *
core_ivf_normalize_into(PyObject *self, PyObject *args)
{
	PyObject   *objs[1];
	Py_buffer	v[1] = {{0}};
	Py_ssize_t	n,
				dim;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "Onn", &objs[0], &n, &dim))
		return NULL;
	if (n < 0 || dim <= 0)
		return PyErr_Format(PyExc_ValueError, "normalize needs n >= 0 rows of dim > 0");
	{
		size_t		bytes[1] = {(size_t) n * dim * 4};
		int			w[1] = {1};
		const char *names[1] = {"x"};

		if (ivf_views(1, objs, v, bytes, w, names) < 0)
			goto done;
	}
	Py_BEGIN_ALLOW_THREADS
	for (Py_ssize_t i = 0; i < n; i++)
		bp_ivf_normalize((float *) v[0].buf + i * dim, dim);
	Py_END_ALLOW_THREADS
	result = Py_NewRef(Py_None);
done:
	ivf_release(1, v);
	return result;
}

/* ivf_rotate_into(x float32[n*dim], n, dim, seed, out float32[n*dim]) */
static PyObject *
core_ivf_rotate_into(PyObject *self, PyObject *args)
{
	PyObject   *objs[2];
	Py_buffer	v[2] = {{0}};
	Py_ssize_t	n,
				dim;
	unsigned long long seed;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OnnKO", &objs[0], &n, &dim, &seed, &objs[1]))
		return NULL;
	if (n < 0 || dim <= 0)
		return PyErr_Format(PyExc_ValueError, "rotate needs n >= 0 rows of dim > 0");
	{
		size_t		bytes[2] = {(size_t) n * dim * 4, (size_t) n * dim * 4};
		int			w[2] = {0, 1};
		const char *names[2] = {"x", "out"};

		if (ivf_views(2, objs, v, bytes, w, names) < 0)
			goto done;
	}
	Py_BEGIN_ALLOW_THREADS
	for (Py_ssize_t i = 0; i < n; i++)
		bp_ivf_rotate((const float *) v[0].buf + i * dim, dim, seed, (float *) v[1].buf + i * dim);
	Py_END_ALLOW_THREADS
	result = Py_NewRef(Py_None);
done:
	ivf_release(2, v);
	return result;
}

/*
 * ivf_encode_into(xr float32[n*dim], n, dim, centroids float32[k*dim], k, bits, spherical,
 *                 lists int32[n] out, codes uint8[n*code_bytes] out, factors float32[n*4] out)
 * xr and centroids rotated; each row goes to its nearest centroid (or lists[i] when >= 0 on
 * entry and assign is false).
 */
static PyObject *
core_ivf_encode_into(PyObject *self, PyObject *args)
{
	PyObject   *objs[5];
	Py_buffer	v[5] = {{0}};
	Py_ssize_t	n,
				dim,
				k;
	int			bits,
				spherical,
				assign;
	float	   *scratch = NULL;
	bp_status	st = BP_OK;
	Py_ssize_t	bad = -1;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OnnOnippOOO", &objs[0], &n, &dim, &objs[1], &k, &bits, &spherical,
						  &assign, &objs[2], &objs[3], &objs[4]))
		return NULL;
	if (n < 0 || dim <= 0 || k <= 0 || bits < 1 || bits > BP_IVF_MAX_BITS)
		return PyErr_Format(PyExc_ValueError, "encode needs dim > 0, k > 0 and 1 to %d bits",
							BP_IVF_MAX_BITS);
	{
		size_t		cb = bp_ivf_code_bytes(dim, bits);
		size_t		bytes[5] = {(size_t) n * dim * 4, (size_t) k * dim * 4, (size_t) n * 4, n * cb,
		(size_t) n * sizeof(bp_ivf_factors)};
		int			w[5] = {0, 0, 1, 1, 1};
		const char *names[5] = {"xr", "centroids", "lists", "codes", "factors"};

		if (ivf_views(5, objs, v, bytes, w, names) < 0)
			goto done;
		scratch = PyMem_Malloc(cb + dim * sizeof(float) + 8);
		if (scratch == NULL)
		{
			PyErr_NoMemory();
			goto done;
		}
		Py_BEGIN_ALLOW_THREADS
		for (Py_ssize_t i = 0; i < n && st == BP_OK; i++)
		{
			const float *x = (const float *) v[0].buf + i * dim;
			int32_t    *list = (int32_t *) v[2].buf + i;

			if (assign || *list < 0 || *list >= k)
				*list = (int32_t) bp_ivf_nearest(x, v[1].buf, k, dim, spherical, NULL);
			st = bp_ivf_encode(x, (const float *) v[1].buf + (size_t) *list * dim, dim, bits, scratch,
							   (uint8_t *) v[3].buf + i * cb, (bp_ivf_factors *) v[4].buf + i);
			if (st != BP_OK)
				bad = i;
		}
		Py_END_ALLOW_THREADS
	}
	if (st != BP_OK)
		raise_status(st, 0, 0, bad);
	else
		result = Py_NewRef(Py_None);
done:
	PyMem_Free(scratch);
	ivf_release(5, v);
	return result;
}

/*
 * ivf_estimate_into(qr float32[dim], cr float32[dim], codes uint8[n*code_bytes],
 *                   factors float32[n*4], n, bits, metric, est float64[n] out, bound float64[n] out)
 * The estimated distances of n codes of one list to the rotated query, and their error bounds.
 */
static PyObject *
core_ivf_estimate_into(PyObject *self, PyObject *args)
{
	PyObject   *objs[6];
	Py_buffer	v[6] = {{0}};
	Py_ssize_t	n,
				dim;
	int			bits,
				metric;
	int16_t    *lut = NULL;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "OOOOnniiOO", &objs[0], &objs[1], &objs[2], &objs[3], &n, &dim,
						  &bits, &metric, &objs[4], &objs[5]))
		return NULL;
	if (n < 0 || dim <= 0 || bits < 1 || bits > BP_IVF_MAX_BITS || metric < 0 || metric > 2)
		return PyErr_Format(PyExc_ValueError, "estimate needs dim > 0, 1 to %d bits, metric 0-2",
							BP_IVF_MAX_BITS);
	{
		size_t		cb = bp_ivf_code_bytes(dim, bits);
		size_t		bytes[6] = {(size_t) dim * 4, (size_t) dim * 4, n * cb,
		(size_t) n * sizeof(bp_ivf_factors), (size_t) n * 8, (size_t) n * 8};
		int			w[6] = {0, 0, 0, 0, 1, 1};
		const char *names[6] = {"qr", "cr", "codes", "factors", "est", "bound"};
		bp_ivf_query q;

		if (ivf_views(6, objs, v, bytes, w, names) < 0)
			goto done;
		lut = PyMem_Malloc(bp_ivf_query_entries(dim) * sizeof(int16_t));
		if (lut == NULL)
		{
			PyErr_NoMemory();
			goto done;
		}
		Py_BEGIN_ALLOW_THREADS
		bp_ivf_query_prep(v[0].buf, dim, bits, &q, lut);
		bp_ivf_query_list(&q, bp_dot(v[0].buf, v[1].buf, dim), bp_dot(v[1].buf, v[1].buf, dim));
		for (Py_ssize_t i = 0; i < n; i++)
			((double *) v[4].buf)[i] = bp_ivf_estimate(&q, (const bp_ivf_factors *) v[3].buf + i,
													   (const uint8_t *) v[2].buf + i * cb, metric,
													   (double *) v[5].buf + i);
		Py_END_ALLOW_THREADS
	}
	result = Py_NewRef(Py_None);
done:
	PyMem_Free(lut);
	ivf_release(6, v);
	return result;
}

/* ivf_dot(a, b, avx2): the index's float kernel on one path (tests: every path, same bits) */
static PyObject *
core_ivf_dot(PyObject *self, PyObject *args)
{
	Py_buffer	a = {0},
				b = {0};
	int			avx2;
	PyObject   *result = NULL;

	if (!PyArg_ParseTuple(args, "y*y*p", &a, &b, &avx2))
		return NULL;
	if (a.len != b.len || a.len % 4 || ((uintptr_t) a.buf & 3) || ((uintptr_t) b.buf & 3))
		PyErr_SetString(PyExc_ValueError, "a and b must be aligned float32 buffers of one size");
	else
		result = PyFloat_FromDouble(bp_dot_with(avx2, a.buf, b.buf, (size_t) a.len / 4));
	PyBuffer_Release(&a);
	PyBuffer_Release(&b);
	return result;
}

static PyMethodDef core_methods[] = {
	{"ivf_kmeans_into", core_ivf_kmeans_into, METH_VARARGS,
	"ivf_kmeans_into(x, n, dim, k, iters, seed, spherical, out): seeded k-means centroids"},
	{"ivf_normalize_into", core_ivf_normalize_into, METH_VARARGS,
	"ivf_normalize_into(x, n, dim): rows scaled to unit length in place, as the index does"},
	{"ivf_rotate_into", core_ivf_rotate_into, METH_VARARGS,
	"ivf_rotate_into(x, n, dim, seed, out): the index's orthogonal rotation of n rows"},
	{"ivf_encode_into", core_ivf_encode_into, METH_VARARGS,
	"ivf_encode_into(xr, n, dim, centroids, k, bits, spherical, assign, lists, codes, factors)"},
	{"ivf_estimate_into", core_ivf_estimate_into, METH_VARARGS,
	"ivf_estimate_into(qr, cr, codes, factors, n, dim, bits, metric, est, bound)"},
	{"ivf_dot", core_ivf_dot, METH_VARARGS, "ivf_dot(a, b, avx2): the index's dot product on one path"},
	{"ffn_into", core_ffn_into, METH_VARARGS,
	"ffn_into(blob, x, nvec, dim, out, mode, k) -> neurons computed: dense or sparse layer"},
	{"segment_checksum", core_segment_checksum, METH_VARARGS,
	 "segment_checksum(ids, codes): the checksum stored beside a packed code segment (signed 64-bit)"},
	{"half_to_float_into", core_half_to_float_into, METH_VARARGS,
	 "half_to_float_into(halves, out): IEEE binary16 to float32, as the extension reads halfvec"},
	{"ffn_shape", core_ffn_shape, METH_VARARGS,
	"ffn_shape(blob) -> (d, h, r, activation, int8, thresholds, offsets): check a stored layer"},
	{"activation_into", core_activation_into, METH_VARARGS,
	"activation_into(kind, x, out): the C core's activation, elementwise"},
	{"dense_matvec_into", core_dense_matvec_into, METH_VARARGS,
	"dense_matvec_into(w, rows, cols, x, nvec, out): x @ w with the Tensor-Train kernels"},
	{"tt_shape", core_tt_shape, METH_VARARGS,
	"tt_shape(cores, shapes) -> (rows, cols, matvec_cost, prefers_dense): check cores"},
	{"tt_into", core_tt_into, METH_VARARGS,
	"tt_into(cores, shapes, what, i, j, x, nvec, out): whole tensor, row, element or x @ W"},
	{"codebook_shape", core_codebook_shape, METH_VARARGS,
	"codebook_shape(blob) -> (dims, components, bits, has_levels): check a stored codebook"},
	{"encode_into", core_encode_into, METH_VARARGS,
	"encode_into(blob, x, n, dim, out): codes of n float32 rows under a codebook"},
	{"asym_scores_into", core_asym_scores_into, METH_VARARGS,
	"asym_scores_into(blob, q, codes, n, out): float query . reconstruction of each code"},
	{"topk_into", core_topk_into, METH_VARARGS,
	"topk_into(keys, kind, n, k, out_index, out_key) -> count: k smallest by a bounded heap"},
	{"hamming_topk_into", core_hamming_topk_into, METH_VARARGS,
	"hamming_topk_into(q, codes, n, nbytes, k, out_index, out_key) -> count: Hamming k-NN"},
	{"binarize_into", core_binarize_into, METH_VARARGS,
	"binarize_into(x, n, dim, thresholds, out): pack n float32 rows into out (uint8)"},
	{"hamming_into", core_hamming_into, METH_VARARGS,
	"hamming_into(a, na, b, nb, nbytes, out): Hamming distances into out (uint64)"},
	{"hamming_with", core_hamming_with, METH_VARARGS,
	"hamming_with(path, a, b): distance computed by one kernel path"},
	{"raise_error", core_raise_error, METH_VARARGS,
	"raise_error(status, a, b): raise the core's exception (message, SQLSTATE) for a status"},
	{"set_impl", core_set_impl, METH_VARARGS, "set_impl(name): force a kernel path; returns it"},
	{"get_impl", core_get_impl, METH_NOARGS, "get_impl(): the kernel path in use"},
	{"supported_impls", core_supported_impls, METH_NOARGS,
	"supported_impls(): kernel paths this CPU can run"},
	{"_set_error_factory", core_set_error_factory, METH_O, "internal: builds the exceptions raised"},
	{NULL, NULL, 0, NULL}
};

static struct PyModuleDef core_module = {
	PyModuleDef_HEAD_INIT, "bitpress._core", "bitpress C core (shared with the PostgreSQL extension)",
	-1, core_methods
};

PyMODINIT_FUNC
PyInit__core(void)
{
	PyObject   *m;

	bp_init();
	m = PyModule_Create(&core_module);
	if (m == NULL)
		return NULL;
	if (PyModule_AddStringConstant(m, "VERSION", BP_VERSION) < 0 ||
		PyModule_AddIntConstant(m, "ERR_DIM_MISMATCH", BP_ERR_DIM_MISMATCH) < 0 ||
		PyModule_AddIntConstant(m, "ERR_BIT_LENGTH_MISMATCH", BP_ERR_BIT_LENGTH_MISMATCH) < 0 ||
		PyModule_AddIntConstant(m, "ERR_CODEBOOK_DIM_MISMATCH", BP_ERR_CODEBOOK_DIM_MISMATCH) < 0 ||
		PyModule_AddIntConstant(m, "ERR_MALFORMED_TT", BP_ERR_MALFORMED_TT) < 0 ||
		PyModule_AddIntConstant(m, "ERR_TT_INDEX", BP_ERR_TT_INDEX) < 0 ||
		PyModule_AddIntConstant(m, "ERR_TT_INPUT_DIM", BP_ERR_TT_INPUT_DIM) < 0 ||
		PyModule_AddIntConstant(m, "TT_NO_CORES", BP_TT_NO_CORES) < 0 ||
		PyModule_AddIntConstant(m, "TT_SHAPE", BP_TT_SHAPE) < 0 ||
		PyModule_AddIntConstant(m, "TT_SIZE", BP_TT_SIZE) < 0 ||
		PyModule_AddIntConstant(m, "TT_MISSING", BP_TT_MISSING) < 0 ||
		PyModule_AddIntConstant(m, "TT_CHECKSUM", BP_TT_CHECKSUM) < 0 ||
		PyModule_AddIntConstant(m, "ERR_MALFORMED_FFN", BP_ERR_MALFORMED_FFN) < 0 ||
		PyModule_AddIntConstant(m, "ERR_FFN_INPUT_DIM", BP_ERR_FFN_INPUT_DIM) < 0 ||
		PyModule_AddIntConstant(m, "ERR_FFN_K", BP_ERR_FFN_K) < 0 ||
		PyModule_AddIntConstant(m, "ERR_NEGATIVE_BITS", BP_ERR_NEGATIVE_BITS) < 0 ||
		PyModule_AddIntConstant(m, "ERR_CODE_BYTES", BP_ERR_CODE_BYTES) < 0 ||
		PyModule_AddIntConstant(m, "ERR_CODE_PADDING", BP_ERR_CODE_PADDING) < 0 ||
		PyModule_AddIntConstant(m, "MAX_DIM", BP_MAX_DIM) < 0)
	{
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
