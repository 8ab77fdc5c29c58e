/* wtrace_none.c - the write tracer's interface (wtrace.h) where its
 * implementation, wtrace.c, is not in the tree: tracing is never usable, so
 * --snapshot auto chooses freeze. The Makefile leaves this file out as soon
 * as wtrace.c exists. */
#include "wtrace.h"

#include "util.h"

int cbi_wtrace_usable(const char *devpath, cbi_error *err)
{
	return cbi_err(err, -ENOTSUP, "this cbimg was built without the write tracer");
}

int cbi_wtrace_start(const char *devpath, uint32_t buf_kib, cbi_wtrace **out, cbi_error *err)
{
	*out = NULL;
	return cbi_wtrace_usable(devpath, err);
}

int cbi_wtrace_collect(cbi_wtrace *t, uint32_t bs, uint64_t n_blocks, uint8_t *touched, uint64_t *n_marked,
		       int *complete, cbi_error *err)
{
	*n_marked = 0;
	*complete = 0;
	return cbi_err(err, -ENOTSUP, "this cbimg was built without the write tracer");
}

void cbi_wtrace_stop(cbi_wtrace *t) { (void)t; }
