/*
 * geo_ws.protocol._mask: WebSocket masking (RFC 6455 section 5.3) in C.
 *
 * apply_mask(data, mask) XORs octet i of data with octet i % 4 of mask and returns new bytes.
 * geo_ws.protocol.frames falls back to pure Python when this module was not built.
 *
 * The loop XORs 8 bytes at a time with the mask repeated twice in a 64-bit word. Words are
 * read and written with memcpy, which compilers turn into plain (often vector) loads and
 * stores where unaligned access is allowed, and into safe byte moves where it is not.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* XOR size bytes of src with the 4-byte mask into dst; src and dst may be the same. */
static void
xor_mask(unsigned char *dst, const unsigned char *src, Py_ssize_t size, const unsigned char *mask)
{
    unsigned char twice[8];
    uint64_t mask64, a, b, c, d;
    Py_ssize_t i = 0;

    /* The mask twice in memory order, so the word is right on any byte order. */
    memcpy(twice, mask, 4);
    memcpy(twice + 4, mask, 4);
    memcpy(&mask64, twice, 8);

    /* Four independent words per turn keep the CPU's load and store units busy. */
    for (; i + 32 <= size; i += 32) {
        memcpy(&a, src + i, 8);
        memcpy(&b, src + i + 8, 8);
        memcpy(&c, src + i + 16, 8);
        memcpy(&d, src + i + 24, 8);
        a ^= mask64;
        b ^= mask64;
        c ^= mask64;
        d ^= mask64;
        memcpy(dst + i, &a, 8);
        memcpy(dst + i + 8, &b, 8);
        memcpy(dst + i + 16, &c, 8);
        memcpy(dst + i + 24, &d, 8);
    }
    for (; i + 8 <= size; i += 8) {
        memcpy(&a, src + i, 8);
        a ^= mask64;
        memcpy(dst + i, &a, 8);
    }
    /* i is a multiple of 8 here, so the tail starts at mask[0]. */
    for (; i < size; i++) {
        dst[i] = src[i] ^ mask[i & 3];
    }
}

PyDoc_STRVAR(apply_mask_doc,
"apply_mask(data, mask, /)\n"
"--\n"
"\n"
"XOR data with the 4-byte mask repeated, and return the result as bytes.\n"
"\n"
"data is any object with the buffer protocol; a non-contiguous buffer is read\n"
"as its bytes in C order. Raises ValueError if mask is not 4 bytes long.");

static PyObject *
apply_mask(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *result = NULL;
    unsigned char *out;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "apply_mask() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    /* FULL_RO accepts strided and indirect buffers too; they are flattened below. */
    if (PyObject_GetBuffer(args[0], &data, PyBUF_FULL_RO) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL) {
        goto done;
    }
    out = (unsigned char *)PyBytes_AS_STRING(result);
    if (PyBuffer_IsContiguous(&data, 'C')) {
        xor_mask(out, (const unsigned char *)data.buf, data.len, (const unsigned char *)mask.buf);
    }
    else {
        /* Gather the bytes first, then mask them in place. */
        if (PyBuffer_ToContiguous(out, &data, data.len, 'C') < 0) {
            Py_CLEAR(result);
            goto done;
        }
        xor_mask(out, out, data.len, (const unsigned char *)mask.buf);
    }

done:
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef mask_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL, apply_mask_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot mask_slots[] = {
#ifdef Py_mod_multiple_interpreters
    /* No module state: every interpreter may load it. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* Nothing shared between calls: safe without the GIL on free-threaded builds. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef mask_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "geo_ws.protocol._mask",
    .m_doc = "WebSocket masking (RFC 6455 section 5.3) in C.",
    .m_size = 0,
    .m_methods = mask_methods,
    .m_slots = mask_slots,
};

PyMODINIT_FUNC
PyInit__mask(void)
{
    return PyModuleDef_Init(&mask_module);
}
