/*
 * bitpress._core: the CPython binding of the C core. It takes buffers (numpy arrays, bytes,
 * Arrow buffers) that the Python layer (bitpress/kernels.py) has shaped and allocated, checks
 * their sizes, releases the GIL and runs one core call per batch. No numpy C API needed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef core_methods[] = {
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
		PyModule_AddIntConstant(m, "MAX_DIM", BP_MAX_DIM) < 0)
	{
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
