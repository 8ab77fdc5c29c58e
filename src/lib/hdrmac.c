/* hdrmac.c - the header MAC of an encrypted chain's files (hdrmac.h). */
#include "hdrmac.h"

#include "util.h"

int cbi_hdr_mac(const uint8_t hdr[CBI_HDR_SIZE], const cbi_keys *k, uint8_t out[16])
{
	uint8_t m[32];
	int rc = cbi_hmac(k->mac_key, hdr, CBI_HDR_MAC_OFF, m);
	memcpy(out, m, 16);
	return rc;
}

int cbi_hdr_encode_keyed(cbi_hdr *h, const cbi_keys *k, uint8_t buf[CBI_HDR_SIZE])
{
	h->version = cbi_hdr_version_for(h);
	if (!(h->flags & CBI_HDR_ENCRYPTED)) {
		memset(h->key_id, 0, 16);
		memset(h->hdr_mac, 0, 16);
		cbi_hdr_encode(h, buf);
		return 0;
	}
	if (!k)
		return -EINVAL;
	memcpy(h->key_id, k->key_id, 16);
	memset(h->hdr_mac, 0, 16);
	cbi_hdr_encode(h, buf);
	int rc = cbi_hdr_mac(buf, k, h->hdr_mac);
	if (!rc)
		cbi_hdr_encode(h, buf);
	return rc;
}

const char *cbi_hdr_keyed_problem(int rc)
{
	return rc == -CBI_EPASS ? "its header names another key than the chain's key file: the header or the "
				  "key file was altered"
				: "header authentication failed: the header was altered";
}

int cbi_hdr_check_keyed(const cbi_hdr *h, const cbi_keys *k)
{
	if (!(h->flags & CBI_HDR_ENCRYPTED))
		return 0;
	if (memcmp(h->key_id, k->key_id, 16) || memcmp(h->chain_id, k->chain_id, 16))
		return -CBI_EPASS;
	uint8_t b[CBI_HDR_SIZE], m[16];
	cbi_hdr_encode(h, b);
	int rc = cbi_hdr_mac(b, k, m);
	if (rc)
		return rc;
	return cbi_ct_memcmp(m, h->hdr_mac, 16) ? -CBI_EAUTH : 0;
}
