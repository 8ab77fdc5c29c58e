/* fuzz_header.c - the fixed structures of format.c: the common header
 * (cbi_hdr_decode), the image and index trailers, the block table entry and
 * the record header, and the header MAC check of an encrypted file.
 *
 * Input: a control byte (fuzz.h: FZ_FIX_HDR repairs the header checksum and
 * MAC), then a header (512 bytes), an image trailer and an index trailer
 * (128 bytes each), zero-padded when short.
 *
 * Besides the sanitizers, it checks that what decodes re-encodes to the very
 * same bytes (a header's MAC covers its re-encoding, format/SPEC.md). */
#include "fuzz.h"

#include "chain.h"
#include "keyfile.h"

static void same(const uint8_t *a, const uint8_t *b, size_t n, const char *what)
{
	if (memcmp(a, b, n)) {
		fprintf(stderr, "%s: decoded and re-encoded bytes differ\n", what);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t ctl = data[0];
	uint8_t b[CBI_HDR_SIZE + 2 * CBI_TRL_SIZE], re[CBI_HDR_SIZE];
	memset(b, 0, sizeof b);
	memcpy(b, data + 1, CBI_MIN(size - 1, sizeof b));
	if (ctl & FZ_FIX_HDR)
		fz_fix_hdr(b);

	cbi_hdr h;
	if (cbi_hdr_decode(b, &h) == 0) {
		cbi_hdr_encode(&h, re);
		same(b, re, CBI_HDR_SIZE, "header");
		if (h.flags & CBI_HDR_ENCRYPTED) {
			cbi_keys k;
			if (!fz_keys(h.chain_id, &k)) {
				int rc = cbi_hdr_check_keyed(&h, &k);
				(void)cbi_hdr_keyed_problem(rc);
				cbi_hdr h2 = h;
				if (cbi_hdr_encode_keyed(&h2, &k, re) == 0 && !rc)
					same(b, re, CBI_HDR_SIZE, "keyed header");
				cbi_keys_wipe(&k);
			}
		}
		/* what a listing makes of the header's text fields */
		cbi_point p;
		char name[512];
		memset(&p, 0, sizeof p);
		cbi_point_from_hdr(&p, &h);
		cbi_point_filename(&h, "cbx", name, sizeof name);
		cbi_keyfile_name(&h, name, sizeof name);
	}

	const uint8_t *it = b + CBI_HDR_SIZE, *xt = it + CBI_TRL_SIZE;
	uint8_t tre[CBI_TRL_SIZE];
	cbi_img_trailer t;
	if (cbi_img_trailer_decode(it, &t) == 0) {
		cbi_img_trailer_encode(&t, tre);
		same(it, tre, CBI_TRL_SIZE, "image trailer");
	}
	cbi_idx_trailer x;
	if (cbi_idx_trailer_decode(xt, &x) == 0) {
		cbi_idx_trailer_encode(&x, tre);
		/* reserved bytes are not the decoder's business */
		int rz = cbi_layout_reserved_zero(&cbi_idx_trailer_layout, xt);
		const cbi_field *r = cbi_layout_field(&cbi_idx_trailer_layout, "reserved");
		same(xt, tre, r->off, "index trailer");
		same(xt + r->off + r->size, tre + r->off + r->size, CBI_TRL_SIZE - r->off - r->size,
		     "index trailer");
		if (rz)
			same(xt, tre, CBI_TRL_SIZE, "index trailer");
	}

	cbi_rec_hdr rh;
	if (cbi_rec_hdr_decode(b + 8, &rh) == 0) {
		cbi_rec_hdr_encode(&rh, re);
		same(b + 8, re, CBI_REC_HDR_SIZE, "record header");
	}
	cbi_tab_ent te;
	cbi_tab_ent_decode(b + 64, &te);
	cbi_tab_ent_encode(&te, re);
	same(b + 64, re, CBI_TAB_ENT_SIZE, "table entry");
	cbi_idx_ent xe;
	cbi_idx_ent_decode(b + 96, &xe);
	cbi_idx_ent_encode(&xe, re);
	same(b + 96, re, CBI_IDX_ENT_SIZE, "index entry");
	return 0;
}
