/* s3.c - the S3 client of s3.h on libcurl.
 *
 * Signing is libcurl's (CURLOPT_AWS_SIGV4). Two things libcurl 7.88 does
 * not do are done here, or Ceph RGW answers 403 SignatureDoesNotMatch
 * (measured, issue 18): every request carries x-amz-content-sha256
 * (UNSIGNED-PAYLOAD: bodies are streamed, and TLS or the loopback protects
 * them; each part's integrity is the server's ETag and, above it, the
 * chain's own digests), and the query string is built here already sorted
 * and percent-encoded (cbi_s3_query), since curl signs it as given. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef CBI_HAVE_CURL
#include <curl/curl.h>
#include <dlfcn.h>
#include <openssl/crypto.h>
#endif

#include "s3.h"

/* ------------------------------------------------------------ pure parts */

int cbi_s3_url_parse(const char *url, char *bucket, size_t bsz, char *prefix, size_t psz, cbi_error *err)
{
	if (!url || strncmp(url, "s3://", 5))
		return 0;
	const char *b = url + 5, *slash = strchr(b, '/');
	size_t bl = slash ? (size_t)(slash - b) : strlen(b);
	if (bl < 3 || bl > 63 || bl >= bsz)
		return cbi_err(err, -CBI_EUSAGE, "'%s': the bucket name must be 3 to 63 characters", url);
	for (size_t i = 0; i < bl; i++)
		if (!((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= '0' && b[i] <= '9') || b[i] == '-' || b[i] == '.'))
			return cbi_err(err, -CBI_EUSAGE,
				       "'%s': a bucket name holds only lowercase letters, digits, '-' and '.'", url);
	memcpy(bucket, b, bl);
	bucket[bl] = 0;
	const char *p = slash ? slash + 1 : "";
	while (*p == '/')
		p++;
	size_t pl = strlen(p);
	while (pl && p[pl - 1] == '/')
		pl--;
	if (pl >= psz || pl > 512)
		return cbi_err(err, -CBI_EUSAGE, "'%s': prefix too long", url);
	memcpy(prefix, p, pl);
	prefix[pl] = 0;
	if (strstr(prefix, "//") || strstr(prefix, "/./") || strstr(prefix, "/../") || !strcmp(prefix, "..") ||
	    !strncmp(prefix, "../", 3))
		return cbi_err(err, -CBI_EUSAGE, "'%s': empty, '.' or '..' components in the prefix", url);
	return 1;
}

static void trim(char *s)
{
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = 0;
	size_t i = 0;
	while (s[i] == ' ' || s[i] == '\t')
		i++;
	memmove(s, s + i, strlen(s + i) + 1);
}

int cbi_s3_parse_profile(const char *text, const char *profile, cbi_s3_cfg *c)
{
	int in = 0, found = 0;
	const char *p = text;
	char line[4096];
	while (p && *p) {
		const char *nl = strchr(p, '\n');
		size_t l = nl ? (size_t)(nl - p) : strlen(p);
		if (l >= sizeof line)
			l = sizeof line - 1;
		memcpy(line, p, l);
		line[l] = 0;
		p = nl ? nl + 1 : NULL;
		trim(line);
		if (!line[0] || line[0] == '#' || line[0] == ';')
			continue;
		if (line[0] == '[') {
			char *e = strchr(line, ']');
			if (!e)
				continue;
			*e = 0;
			char *name = line + 1;
			trim(name);
			if (!strncmp(name, "profile ", 8)) {
				name += 8;
				trim(name);
			}
			in = !strcmp(name, profile);
			found |= in;
			continue;
		}
		if (!in)
			continue;
		char *eq = strchr(line, '=');
		if (!eq)
			continue;
		*eq = 0;
		char *k = line, *v = eq + 1;
		trim(k);
		trim(v);
		if (!strcmp(k, "aws_access_key_id"))
			cbi_strlcpy(c->access_key, v, sizeof c->access_key);
		else if (!strcmp(k, "aws_secret_access_key"))
			cbi_strlcpy(c->secret_key, v, sizeof c->secret_key);
		else if (!strcmp(k, "aws_session_token"))
			cbi_strlcpy(c->session_token, v, sizeof c->session_token);
		else if (!strcmp(k, "region"))
			cbi_strlcpy(c->region, v, sizeof c->region);
		else if (!strcmp(k, "endpoint_url") && !c->endpoint[0])
			cbi_strlcpy(c->endpoint, v, sizeof c->endpoint);
	}
	return found;
}

int cbi_s3_uri_encode(const char *in, int keep_slash, char *out, size_t outsz)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		int keep = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
			   *p == '-' || *p == '_' || *p == '.' || *p == '~' || (keep_slash && *p == '/');
		if (o + (keep ? 1 : 3) >= outsz)
			return -ENAMETOOLONG;
		if (keep) {
			out[o++] = (char)*p;
		} else {
			out[o++] = '%';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		}
	}
	if (o >= outsz)
		return -ENAMETOOLONG;
	out[o] = 0;
	return (int)o;
}

typedef struct qpair {
	char k[1100], v[1100];
} qpair;

static int qcmp(const void *a, const void *b)
{
	const qpair *x = a, *y = b;
	int c = strcmp(x->k, y->k);
	return c ? c : strcmp(x->v, y->v);
}

int cbi_s3_query(const char *const *kv, size_t n, char *out, size_t outsz)
{
	if (n > 16)
		return -E2BIG;
	qpair q[16];
	for (size_t i = 0; i < n; i++) {
		if (cbi_s3_uri_encode(kv[2 * i], 0, q[i].k, sizeof q[i].k) < 0 ||
		    cbi_s3_uri_encode(kv[2 * i + 1] ? kv[2 * i + 1] : "", 0, q[i].v, sizeof q[i].v) < 0)
			return -ENAMETOOLONG;
	}
	qsort(q, n, sizeof q[0], qcmp);
	size_t o = 0;
	if (outsz)
		out[0] = 0;
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(out + o, outsz - o, "%s%s=%s", i ? "&" : "", q[i].k, q[i].v);
		if (w < 0 || (size_t)w >= outsz - o)
			return -ENAMETOOLONG;
		o += (size_t)w;
	}
	return (int)o;
}

/* The text of the next <tag>...</tag> in [p, end): its bounds, and the
 * position after the closing tag; NULL when absent. */
static const char *xml_tag(const char *p, const char *end, const char *tag, const char **vs, const char **ve)
{
	char open[64], close[64];
	snprintf(open, sizeof open, "<%s>", tag);
	snprintf(close, sizeof close, "</%s>", tag);
	size_t ol = strlen(open), cl = strlen(close);
	for (; p && p + ol <= end; p++) {
		p = memmem(p, (size_t)(end - p), open, ol);
		if (!p)
			return NULL;
		const char *s = p + ol;
		const char *e = memmem(s, (size_t)(end - s), close, cl);
		if (!e)
			return NULL;
		*vs = s;
		*ve = e;
		return e + cl;
	}
	return NULL;
}

/* Copy XML text [s, e) decoding the five entities and numeric ones (ASCII
 * and UTF-8 up to U+FFFF); 0, or -1 when it does not fit. */
static int xml_text(const char *s, const char *e, char *out, size_t outsz)
{
	size_t o = 0;
	while (s < e) {
		char c = *s++;
		if (c == '&') {
			const char *semi = memchr(s, ';', (size_t)(e - s));
			if (!semi || semi - s > 8)
				return -1;
			size_t l = (size_t)(semi - s);
			unsigned long cp = 0;
			if (l == 3 && !memcmp(s, "amp", 3))
				cp = '&';
			else if (l == 2 && !memcmp(s, "lt", 2))
				cp = '<';
			else if (l == 2 && !memcmp(s, "gt", 2))
				cp = '>';
			else if (l == 4 && !memcmp(s, "quot", 4))
				cp = '"';
			else if (l == 4 && !memcmp(s, "apos", 4))
				cp = '\'';
			else if (l >= 2 && s[0] == '#') {
				char num[12];
				memcpy(num, s + 1, l - 1);
				num[l - 1] = 0;
				char *ep;
				cp = num[0] == 'x' ? strtoul(num + 1, &ep, 16) : strtoul(num, &ep, 10);
				if (*ep || !cp || cp > 0xFFFF)
					return -1;
			} else
				return -1;
			s = semi + 1;
			if (cp < 0x80) {
				if (o + 1 >= outsz)
					return -1;
				out[o++] = (char)cp;
			} else if (cp < 0x800) {
				if (o + 2 >= outsz)
					return -1;
				out[o++] = (char)(0xC0 | (cp >> 6));
				out[o++] = (char)(0x80 | (cp & 0x3F));
			} else {
				if (o + 3 >= outsz)
					return -1;
				out[o++] = (char)(0xE0 | (cp >> 12));
				out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
				out[o++] = (char)(0x80 | (cp & 0x3F));
			}
			continue;
		}
		if (!c || o + 1 >= outsz)
			return -1;
		out[o++] = c;
	}
	if (o >= outsz)
		return -1;
	out[o] = 0;
	return 0;
}

void cbi_s3_parse_error(const char *xml, size_t len, char *code, size_t csz, char *msg, size_t msz)
{
	const char *vs, *ve, *end = xml + len;
	code[0] = msg[0] = 0;
	if (!xml || !len)
		return;
	if (xml_tag(xml, end, "Code", &vs, &ve) && xml_text(vs, ve, code, csz))
		code[0] = 0;
	if (xml_tag(xml, end, "Message", &vs, &ve) && xml_text(vs, ve, msg, msz))
		msg[0] = 0;
}

int cbi_s3_parse_list(const char *xml, size_t len, int uploads, cbi_s3_obj **v, size_t *n, size_t *cap,
		      int *truncated, char *next, size_t nextsz, char *next2, size_t next2sz)
{
	const char *end = xml + len, *vs, *ve, *p;
	char buf[32];
	if (!memmem(xml, len, uploads ? "<ListMultipartUploadsResult" : "<ListBucketResult",
		    uploads ? 27 : 17))
		return -EIO;
	*truncated = 0;
	next[0] = 0;
	if (next2)
		next2[0] = 0;
	const char *item = uploads ? "Upload" : "Contents";
	/* the scalar fields before or after the items: look outside them */
	p = xml;
	const char *is, *ie;
	while ((p = xml_tag(p, end, item, &is, &ie))) {
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 64;
			cbi_s3_obj *nv = realloc(*v, nc * sizeof *nv);
			if (!nv)
				return -ENOMEM;
			*v = nv;
			*cap = nc;
		}
		cbi_s3_obj *o = &(*v)[*n];
		memset(o, 0, sizeof *o);
		if (!xml_tag(is, ie, "Key", &vs, &ve) || xml_text(vs, ve, o->key, sizeof o->key) || !o->key[0])
			return -EIO;
		if (uploads) {
			if (!xml_tag(is, ie, "UploadId", &vs, &ve) ||
			    xml_text(vs, ve, o->upload_id, sizeof o->upload_id))
				return -EIO;
		} else {
			if (!xml_tag(is, ie, "Size", &vs, &ve) || xml_text(vs, ve, buf, sizeof buf))
				return -EIO;
			char *ep;
			errno = 0;
			unsigned long long sz = strtoull(buf, &ep, 10);
			if (*ep || errno || buf[0] == '-' || !buf[0])
				return -EIO;
			o->size = sz;
			/* optional; one too long for the field counts as none */
			if (xml_tag(is, ie, "ETag", &vs, &ve) && xml_text(vs, ve, o->etag, sizeof o->etag))
				o->etag[0] = 0;
		}
		(*n)++;
	}
	/* IsTruncated and the markers: the first occurrence outside any item
	 * (items never hold these names) */
	if (xml_tag(xml, end, "IsTruncated", &vs, &ve) && !xml_text(vs, ve, buf, sizeof buf))
		*truncated = !strcmp(buf, "true");
	if (uploads) {
		if (xml_tag(xml, end, "NextKeyMarker", &vs, &ve) && xml_text(vs, ve, next, nextsz))
			return -EIO;
		if (next2 && xml_tag(xml, end, "NextUploadIdMarker", &vs, &ve) && xml_text(vs, ve, next2, next2sz))
			return -EIO;
	} else if (xml_tag(xml, end, "NextContinuationToken", &vs, &ve) && xml_text(vs, ve, next, nextsz)) {
		return -EIO;
	}
	if (*truncated && !next[0])
		return -EIO; /* truncated with nowhere to go on: would loop */
	return 0;
}

const char *cbi_s3_bucket(const cbi_s3 *s);

/* ---------------------------------------------------------- configuration */

static char *slurp(const char *path, size_t max)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *b = malloc(max + 1);
	size_t n = 0;
	ssize_t r;
	while (b && n < max && (r = read(fd, b + n, max - n)) > 0)
		n += (size_t)r;
	close(fd);
	if (b)
		b[n] = 0;
	return b;
}

int cbi_s3_cfg_load(cbi_s3_cfg *c, const char *endpoint_opt, cbi_error *err)
{
	memset(c, 0, sizeof *c);
	const char *e = endpoint_opt && *endpoint_opt ? endpoint_opt : getenv("S3_ENDPOINT");
	if (!e || !*e)
		e = getenv("AWS_ENDPOINT_URL");
	if (e && *e)
		cbi_strlcpy(c->endpoint, e, sizeof c->endpoint);
	const char *ak = getenv("AWS_ACCESS_KEY_ID"), *sk = getenv("AWS_SECRET_ACCESS_KEY");
	const char *prof = getenv("AWS_PROFILE");
	char path[4096];
	const char *home = getenv("HOME");
	if (ak && *ak && sk && *sk) { /* as the AWS tools: the environment before a profile */
		cbi_strlcpy(c->access_key, ak, sizeof c->access_key);
		cbi_strlcpy(c->secret_key, sk, sizeof c->secret_key);
		const char *tok = getenv("AWS_SESSION_TOKEN");
		if (tok)
			cbi_strlcpy(c->session_token, tok, sizeof c->session_token);
	} else {
		const char *pname = prof && *prof ? prof : "default";
		const char *cf = getenv("AWS_SHARED_CREDENTIALS_FILE");
		if (cf && *cf)
			cbi_strlcpy(path, cf, sizeof path);
		else
			snprintf(path, sizeof path, "%s/.aws/credentials", home ? home : "");
		char *text = slurp(path, 1 << 20);
		int found = text ? cbi_s3_parse_profile(text, pname, c) : 0;
		free(text);
		if (!found || !c->access_key[0] || !c->secret_key[0])
			return cbi_err(err, -EACCES,
				       "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
				       "AWS_PROFILE with a profile '%s' in '%s'",
				       pname, path);
	}
	const char *r = getenv("AWS_REGION");
	if (!r || !*r)
		r = getenv("AWS_DEFAULT_REGION");
	if (r && *r) {
		cbi_strlcpy(c->region, r, sizeof c->region);
	} else {
		const char *cfg = getenv("AWS_CONFIG_FILE");
		if (cfg && *cfg)
			cbi_strlcpy(path, cfg, sizeof path);
		else
			snprintf(path, sizeof path, "%s/.aws/config", home ? home : "");
		char *text = slurp(path, 1 << 20);
		if (text)
			cbi_s3_parse_profile(text, prof && *prof ? prof : "default", c);
		free(text);
	}
	if (!c->region[0])
		cbi_strlcpy(c->region, "us-east-1", sizeof c->region);
	size_t el = strlen(c->endpoint);
	while (el && c->endpoint[el - 1] == '/')
		c->endpoint[--el] = 0;
	if (el && strncmp(c->endpoint, "http://", 7) && strncmp(c->endpoint, "https://", 8))
		return cbi_err(err, -CBI_EUSAGE, "S3 endpoint '%s': expected http://HOST[:PORT] or https://...",
			       c->endpoint);
	return 0;
}

#ifdef CBI_HAVE_CURL
/* ---------------------------------------------------------------- libcurl */

/* libcurl is loaded when the first S3 DEST is opened (dlopen), not when
 * cbimg starts: with its dependencies (TLS, Kerberos, LDAP, SSH, IDN...) it
 * was most of every command's start-up, S3 or not: 14 ms of 18 with a warm
 * page cache (bench/RESULTS.md, session 9). The header still comes from
 * pkg-config; the library is the soname the -dev package links to. */
static struct {
	int ok;
	char why[256]; /* when not ok */
	CURLcode (*global_init)(long);
	CURL *(*easy_init)(void);
	void (*easy_cleanup)(CURL *);
	void (*easy_reset)(CURL *);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_perform)(CURL *);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	const char *(*easy_strerror)(CURLcode);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
} cu;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
	/* CBIMG_S3_LIBCURL names another build (libcurl-gnutls.so.4, a path) */
	const char *env = getenv("CBIMG_S3_LIBCURL");
	const char *names[] = { "libcurl.so.4", "libcurl.so" };
	size_t nn = 2;
	if (env && *env) {
		names[0] = env;
		nn = 1;
	}
	void *h = NULL;
	for (size_t i = 0; !h && i < nn; i++)
		if (!(h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL)) && !i)
			snprintf(cu.why, sizeof cu.why, "%s", dlerror()); /* the first name's reason */
	if (!h)
		return; /* never closed once opened: curl keeps global state */
	struct {
		const char *name;
		void **fn;
	} syms[] = {
		{ "curl_global_init", (void **)&cu.global_init },
		{ "curl_easy_init", (void **)&cu.easy_init },
		{ "curl_easy_cleanup", (void **)&cu.easy_cleanup },
		{ "curl_easy_reset", (void **)&cu.easy_reset },
		{ "curl_easy_setopt", (void **)&cu.easy_setopt },
		{ "curl_easy_perform", (void **)&cu.easy_perform },
		{ "curl_easy_getinfo", (void **)&cu.easy_getinfo },
		{ "curl_easy_strerror", (void **)&cu.easy_strerror },
		{ "curl_slist_append", (void **)&cu.slist_append },
		{ "curl_slist_free_all", (void **)&cu.slist_free_all },
	};
	for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
		if (!(*syms[i].fn = dlsym(h, syms[i].name))) {
			snprintf(cu.why, sizeof cu.why, "%s: no %s", names[0], syms[i].name);
			return;
		}
	if (cu.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(cu.why, sizeof cu.why, "curl_global_init failed");
		return;
	}
	cu.ok = 1;
}

/* -------------------------------------------------------------- requests */

#define POOL_MAX 8

struct cbi_s3 {
	cbi_s3_cfg cfg;
	char bucket[64];
	char base[700];   /* scheme://host[:port][/bucket] */
	char sigv4[128];
	char userpwd[600];
	pthread_mutex_t mu;
	CURL *pool[POOL_MAX];
	int npool;
	int retries;
	int jobs;
	uint64_t part;
	uint64_t sent, received;
};

const char *cbi_s3_bucket(const cbi_s3 *s)
{
	return s->bucket;
}

void cbi_s3_tuning(const cbi_s3 *s, int *jobs, uint64_t *part)
{
	*jobs = s->jobs;
	*part = s->part;
}

void cbi_s3_counters(const cbi_s3 *s, uint64_t *sent, uint64_t *received)
{
	pthread_mutex_lock((pthread_mutex_t *)&s->mu);
	*sent = s->sent;
	*received = s->received;
	pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
}

static long env_long(const char *name, long def, long lo, long hi)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return def;
	char *e;
	long x = strtol(v, &e, 10);
	return *e || x < lo || x > hi ? def : x;
}

int cbi_s3_open(const cbi_s3_cfg *c, const char *bucket, cbi_s3 **out, cbi_error *err)
{
	pthread_once(&curl_once, curl_init_once);
	if (!cu.ok)
		return cbi_err(err, -ENOTSUP, "S3 needs libcurl, which is not usable here: %s (install libcurl4)",
			       cu.why);
	cbi_s3 *s = calloc(1, sizeof *s);
	if (!s)
		return cbi_err(err, -ENOMEM, "out of memory");
	s->cfg = *c;
	cbi_strlcpy(s->bucket, bucket, sizeof s->bucket);
	if (c->endpoint[0])
		snprintf(s->base, sizeof s->base, "%s/%s", c->endpoint, bucket); /* path-style */
	else
		snprintf(s->base, sizeof s->base, "https://%s.s3.%s.amazonaws.com", bucket, c->region);
	snprintf(s->sigv4, sizeof s->sigv4, "aws:amz:%s:s3", c->region);
	snprintf(s->userpwd, sizeof s->userpwd, "%s:%s", c->access_key, c->secret_key);
	pthread_mutex_init(&s->mu, NULL);
	s->retries = (int)env_long("CBIMG_S3_RETRIES", 5, 1, 100);
	s->jobs = (int)env_long("CBIMG_S3_JOBS", 4, 1, POOL_MAX);
	s->part = (uint64_t)env_long("CBIMG_S3_PART_MIB", 16, 5, 4096) << 20;
	*out = s;
	return 0;
}

void cbi_s3_close(cbi_s3 *s)
{
	if (!s)
		return;
	for (int i = 0; i < s->npool; i++)
		cu.easy_cleanup(s->pool[i]);
	pthread_mutex_destroy(&s->mu);
	OPENSSL_cleanse(s, sizeof *s);
	free(s);
}

static CURL *handle_get(cbi_s3 *s)
{
	CURL *h = NULL;
	pthread_mutex_lock(&s->mu);
	if (s->npool)
		h = s->pool[--s->npool];
	pthread_mutex_unlock(&s->mu);
	return h ? h : cu.easy_init();
}

static void handle_put(cbi_s3 *s, CURL *h)
{
	pthread_mutex_lock(&s->mu);
	if (s->npool < POOL_MAX) {
		s->pool[s->npool++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&s->mu);
	if (h)
		cu.easy_cleanup(h);
}

typedef struct buf {
	char *p;
	size_t n, cap, max;
} buf;

typedef struct req {
	const char *method;
	const char *key;          /* NULL: the bucket itself */
	const char *query;        /* canonical, or NULL */
	int if_none_match;
	const char *range;        /* "bytes=A-B" or NULL */
	/* the body: a buffer, or [foff, foff+len) of fd */
	const void *body;
	size_t body_len;
	int fd;
	uint64_t foff;
	/* where the response body goes: resp (bounded), else out (a fixed
	 * buffer), else out_fd at out_off, else nowhere */
	buf *resp;
	char *out;
	size_t out_cap;
	int out_fd;
	uint64_t out_off;
	/* results */
	long status;
	char etag[CBI_S3_ETAG_MAX];
	uint64_t clen;
	int have_clen;
	/* state of one attempt */
	size_t pos, got;
	int werr;
} req;

static size_t read_cb(char *dst, size_t sz, size_t nm, void *ud)
{
	req *r = ud;
	size_t want = sz * nm, left = r->body_len - r->pos;
	if (want > left)
		want = left;
	if (!want)
		return 0;
	if (r->body) {
		memcpy(dst, (const char *)r->body + r->pos, want);
	} else if (cbi_pread_full(r->fd, dst, want, r->foff + r->pos)) {
		return CURL_READFUNC_ABORT;
	}
	r->pos += want;
	return want;
}

static size_t write_cb(char *src, size_t sz, size_t nm, void *ud)
{
	req *r = ud;
	size_t n = sz * nm;
	if (r->status / 100 != 2 || (!r->out && r->out_fd < 0)) {
		/* error bodies, and listings: kept in resp (bounded) */
		buf *b = r->resp;
		if (!b)
			return n;
		if (b->n + n > b->max) {
			r->werr = -E2BIG;
			return 0;
		}
		if (b->n + n + 1 > b->cap) {
			size_t nc = (b->n + n + 1) * 2;
			char *np = realloc(b->p, nc);
			if (!np) {
				r->werr = -ENOMEM;
				return 0;
			}
			b->p = np;
			b->cap = nc;
		}
		memcpy(b->p + b->n, src, n);
		b->n += n;
		b->p[b->n] = 0;
		return n;
	}
	if (r->out) {
		if (r->got + n > r->out_cap) {
			r->werr = -E2BIG;
			return 0;
		}
		memcpy(r->out + r->got, src, n);
	} else if (cbi_pwrite_full(r->out_fd, src, n, r->out_off + r->got)) {
		r->werr = -EIO;
		return 0;
	}
	r->got += n;
	return n;
}

static size_t header_cb(char *src, size_t sz, size_t nm, void *ud)
{
	req *r = ud;
	size_t n = sz * nm;
	if (n > 9 && !strncmp(src, "HTTP/", 5)) {
		/* a new response (after 100 Continue, or a retry): its status */
		const char *sp = memchr(src, ' ', n);
		r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		r->have_clen = 0;
	} else if (n > 5 && !strncasecmp(src, "ETag:", 5)) {
		size_t l = n - 5;
		const char *v = src + 5;
		while (l && (*v == ' ' || *v == '\t'))
			v++, l--;
		while (l && (v[l - 1] == '\r' || v[l - 1] == '\n' || v[l - 1] == ' '))
			l--;
		if (l < sizeof r->etag) {
			memcpy(r->etag, v, l);
			r->etag[l] = 0;
		}
	} else if (n > 15 && !strncasecmp(src, "Content-Length:", 15)) {
		r->clen = strtoull(src + 15, NULL, 10);
		r->have_clen = 1;
	}
	return n;
}

static int transient_curl(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_COULDNT_RESOLVE_HOST:
		return 1;
	default:
		return 0;
	}
}

static void backoff(int attempt)
{
	/* 100 ms doubling to 3.2 s, with jitter: a restarted server gets time,
	 * and the bound keeps an unreachable endpoint's failure quick */
	long ms = 100L << (attempt < 5 ? attempt : 5);
	unsigned r = 0;
	cbi_random(&r, sizeof r);
	ms = ms / 2 + (long)(r % (unsigned long)(ms / 2 + 1));
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* What a request names in messages: s3://bucket/key. */
static void what(const cbi_s3 *s, const req *r, char *out, size_t sz)
{
	snprintf(out, sz, "s3://%s/%s", s->bucket, r->key ? r->key : "");
}

static int status_error(cbi_s3 *s, req *r, cbi_error *err)
{
	char code[128], msg[256], w[1200];
	what(s, r, w, sizeof w);
	cbi_s3_parse_error(r->resp ? r->resp->p : NULL, r->resp ? r->resp->n : 0, code, sizeof code, msg,
			   sizeof msg);
	if (r->status == 412)
		return cbi_err(err, -EEXIST, "'%s' exists already", w);
	if (!strcmp(code, "NoSuchBucket"))
		return cbi_err(err, -ENOENT, "bucket '%s' does not exist at '%s'", s->bucket,
			       s->cfg.endpoint[0] ? s->cfg.endpoint : "AWS");
	if (r->status == 404 || !strcmp(code, "NoSuchKey") || !strcmp(code, "NoSuchUpload"))
		return cbi_err(err, -ENOENT, "'%s': no such object%s", w,
			       !strcmp(code, "NoSuchUpload") ? " upload" : "");
	if (r->status == 403 || r->status == 401)
		return cbi_err(err, -EACCES,
			       "'%s': access denied by '%s' (%s): check the S3 credentials "
			       "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE)",
			       w, s->cfg.endpoint[0] ? s->cfg.endpoint : "AWS", code[0] ? code : "403");
	return cbi_err(err, -EIO, "'%s': %s %ld%s%s%s%s", w, r->method, r->status, code[0] ? " " : "", code,
		       msg[0] ? ": " : "", msg);
}

static int do_req(cbi_s3 *s, req *r, cbi_error *err)
{
	char url[4096], enc[3072], w[1200];
	if (r->key && cbi_s3_uri_encode(r->key, 1, enc, sizeof enc) < 0)
		return cbi_err(err, -ENAMETOOLONG, "S3 key too long: '%s'", r->key);
	snprintf(url, sizeof url, "%s/%s%s%s", s->base, r->key ? enc : "", r->query ? "?" : "",
		 r->query ? r->query : "");
	int rc = -EIO;
	for (int attempt = 0; attempt < s->retries; attempt++) {
		if (attempt)
			backoff(attempt - 1);
		CURL *h = handle_get(s);
		if (!h)
			return cbi_err(err, -ENOMEM, "out of memory");
		cu.easy_reset(h);
		struct curl_slist *hd = NULL;
		hd = cu.slist_append(hd, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
		if (r->if_none_match)
			hd = cu.slist_append(hd, "If-None-Match: *");
		if (s->cfg.session_token[0]) {
			char t[2100];
			snprintf(t, sizeof t, "x-amz-security-token: %s", s->cfg.session_token);
			hd = cu.slist_append(hd, t);
		}
		char rg[96];
		if (r->range) {
			snprintf(rg, sizeof rg, "Range: %s", r->range);
			hd = cu.slist_append(hd, rg);
		}
		/* No "Expect:" to switch off 100-continue: curl 7.88 signs the
		 * empty header it then leaves out, and RGW answers 403 (measured). */
		r->pos = r->got = 0;
		r->werr = 0;
		r->status = 0;
		r->etag[0] = 0;
		r->have_clen = 0;
		if (r->resp)
			r->resp->n = 0;
		cu.easy_setopt(h, CURLOPT_URL, url);
		cu.easy_setopt(h, CURLOPT_AWS_SIGV4, s->sigv4);
		cu.easy_setopt(h, CURLOPT_USERPWD, s->userpwd);
		cu.easy_setopt(h, CURLOPT_HTTPHEADER, hd);
		cu.easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
		cu.easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
		cu.easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
		cu.easy_setopt(h, CURLOPT_CONNECTTIMEOUT, env_long("CBIMG_S3_CONNECT_TIMEOUT", 10, 1, 600));
		/* a stalled transfer (less than 1 byte/s for the timeout) fails */
		cu.easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
		cu.easy_setopt(h, CURLOPT_LOW_SPEED_TIME, env_long("CBIMG_S3_TIMEOUT", 60, 1, 3600));
		cu.easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
		cu.easy_setopt(h, CURLOPT_HEADERDATA, r);
		cu.easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
		cu.easy_setopt(h, CURLOPT_WRITEDATA, r);
		if (!strcmp(r->method, "PUT")) {
			cu.easy_setopt(h, CURLOPT_UPLOAD, 1L);
			cu.easy_setopt(h, CURLOPT_READFUNCTION, read_cb);
			cu.easy_setopt(h, CURLOPT_READDATA, r);
			cu.easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
		} else if (!strcmp(r->method, "POST")) {
			cu.easy_setopt(h, CURLOPT_POST, 1L);
			cu.easy_setopt(h, CURLOPT_READFUNCTION, read_cb);
			cu.easy_setopt(h, CURLOPT_READDATA, r);
			cu.easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
		} else if (!strcmp(r->method, "HEAD")) {
			cu.easy_setopt(h, CURLOPT_NOBODY, 1L);
		} else if (strcmp(r->method, "GET")) {
			cu.easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
		}
		CURLcode cc = cu.easy_perform(h);
		cu.slist_free_all(hd);
		long st = 0;
		cu.easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
		if (st)
			r->status = st;
		if (cc == CURLE_OK || (cc == CURLE_WRITE_ERROR && r->werr))
			handle_put(s, h);
		else
			cu.easy_cleanup(h); /* a broken connection is not reused */
		pthread_mutex_lock(&s->mu);
		s->sent += r->pos;
		s->received += r->got;
		pthread_mutex_unlock(&s->mu);
		if (r->werr)
			return cbi_err(err, r->werr, "'%s': response too large or not stored: %s",
				       (what(s, r, w, sizeof w), w), cbi_strerror(r->werr));
		if (cc != CURLE_OK) {
			what(s, r, w, sizeof w);
			if (transient_curl(cc) && attempt + 1 < s->retries)
				continue;
			int code = cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ? -EHOSTUNREACH
				   : cc == CURLE_OPERATION_TIMEDOUT				  ? -ETIMEDOUT
												  : -EIO;
			return cbi_err(err, code, "S3 endpoint '%s' (for '%s'): %s (after %d attempt%s)",
				       s->cfg.endpoint[0] ? s->cfg.endpoint : s->base, w, cu.easy_strerror(cc),
				       attempt + 1, attempt ? "s" : "");
		}
		if (r->status / 100 == 2)
			return 0;
		if ((r->status >= 500 || r->status == 429) && attempt + 1 < s->retries)
			continue;
		return status_error(s, r, err);
	}
	return rc;
}

/* ------------------------------------------------------------ operations */

int cbi_s3_put(cbi_s3 *s, const char *key, const void *b, size_t len, int if_none_match, cbi_error *err)
{
	buf eb = { .max = 1 << 16 };
	req r = { .method = "PUT", .key = key, .if_none_match = if_none_match, .body = b ? b : "",
		  .body_len = len, .fd = -1, .resp = &eb, .out_fd = -1 };
	int rc = do_req(s, &r, err);
	free(eb.p);
	return rc;
}

int cbi_s3_head(cbi_s3 *s, const char *key, uint64_t *size, cbi_error *err)
{
	req r = { .method = "HEAD", .key = key, .fd = -1, .out_fd = -1 };
	int rc = do_req(s, &r, err);
	if (!rc && size)
		*size = r.have_clen ? r.clen : 0;
	return rc;
}

int cbi_s3_delete(cbi_s3 *s, const char *key, cbi_error *err)
{
	buf eb = { .max = 1 << 16 };
	req r = { .method = "DELETE", .key = key, .fd = -1, .resp = &eb, .out_fd = -1 };
	int rc = do_req(s, &r, err);
	free(eb.p);
	return rc == -ENOENT ? 0 : rc;
}

int cbi_s3_get(cbi_s3 *s, const char *key, uint64_t off, uint64_t len, void *b, size_t bufsz, size_t *got,
	       cbi_error *err)
{
	char range[96];
	buf eb = { .max = 1 << 16 };
	if (len)
		snprintf(range, sizeof range, "bytes=%llu-%llu", (unsigned long long)off,
			 (unsigned long long)(off + len - 1));
	else if (off)
		snprintf(range, sizeof range, "bytes=%llu-", (unsigned long long)off);
	req r = { .method = "GET", .key = key, .range = len || off ? range : NULL, .fd = -1, .resp = &eb,
		  .out = b, .out_cap = bufsz, .out_fd = -1 };
	int rc = do_req(s, &r, err);
	free(eb.p);
	if (got)
		*got = r.got;
	return rc;
}

static int list_common(cbi_s3 *s, const char *prefix, int uploads, cbi_s3_obj **out, size_t *n, cbi_error *err)
{
	cbi_s3_obj *v = NULL;
	size_t nv = 0, cap = 0;
	char next[1100] = "", next2[300] = "", q[4096];
	buf b = { .max = 16 << 20 };
	int rc = 0, trunc = 0;
	do {
		const char *kv[10];
		size_t k = 0;
		if (uploads) {
			kv[k++] = "uploads", kv[k++] = NULL;
			kv[k++] = "prefix", kv[k++] = prefix;
			if (next[0]) {
				kv[k++] = "key-marker", kv[k++] = next;
				kv[k++] = "upload-id-marker", kv[k++] = next2;
			}
		} else {
			kv[k++] = "list-type", kv[k++] = "2";
			kv[k++] = "prefix", kv[k++] = prefix;
			if (next[0])
				kv[k++] = "continuation-token", kv[k++] = next;
		}
		if (cbi_s3_query(kv, k / 2, q, sizeof q) < 0) {
			rc = cbi_err(err, -ENAMETOOLONG, "S3 listing query too long");
			break;
		}
		req r = { .method = "GET", .query = q, .fd = -1, .resp = &b, .out_fd = -1 };
		if ((rc = do_req(s, &r, err)))
			break;
		if ((rc = cbi_s3_parse_list(b.p ? b.p : "", b.n, uploads, &v, &nv, &cap, &trunc, next, sizeof next,
					    next2, sizeof next2))) {
			rc = cbi_err(err, rc, "s3://%s: unreadable listing from '%s'", s->bucket, s->cfg.endpoint);
			break;
		}
	} while (trunc);
	free(b.p);
	if (rc) {
		free(v);
		return rc;
	}
	*out = v;
	*n = nv;
	return 0;
}

int cbi_s3_list(cbi_s3 *s, const char *prefix, cbi_s3_obj **out, size_t *n, cbi_error *err)
{
	return list_common(s, prefix, 0, out, n, err);
}

int cbi_s3_list_uploads(cbi_s3 *s, const char *prefix, cbi_s3_obj **out, size_t *n, cbi_error *err)
{
	return list_common(s, prefix, 1, out, n, err);
}

int cbi_s3_abort_upload(cbi_s3 *s, const char *key, const char *upload_id, cbi_error *err)
{
	char q[600];
	const char *kv[] = { "uploadId", upload_id };
	if (cbi_s3_query(kv, 1, q, sizeof q) < 0)
		return cbi_err(err, -ENAMETOOLONG, "upload id too long");
	buf eb = { .max = 1 << 16 };
	req r = { .method = "DELETE", .key = key, .query = q, .fd = -1, .resp = &eb, .out_fd = -1 };
	int rc = do_req(s, &r, err);
	free(eb.p);
	return rc;
}

/* ----------------------------------------------------- multipart uploads */

int cbi_s3_mpu_begin(cbi_s3 *s, const char *key, char *uid, size_t uidsz, cbi_error *err)
{
	buf b = { .max = 1 << 20 };
	req r = { .method = "POST", .key = key, .query = "uploads=", .body = "", .fd = -1, .resp = &b,
		  .out_fd = -1 };
	int rc = do_req(s, &r, err);
	const char *vs, *ve;
	if (!rc && (!xml_tag(b.p ? b.p : "", b.p ? b.p + b.n : "", "UploadId", &vs, &ve) ||
		    xml_text(vs, ve, uid, uidsz) || !uid[0]))
		rc = cbi_err(err, -EIO, "s3://%s/%s: no upload id in the answer", s->bucket, key);
	free(b.p);
	return rc;
}

/* Part num (from 1) of an upload: len bytes of data, or of fd at foff. */
static int mpu_part(cbi_s3 *s, const char *key, const char *uid, uint32_t num, const void *data, int fd,
		    uint64_t foff, size_t len, char etag[CBI_S3_ETAG_MAX], cbi_error *err)
{
	char q[600], n[16];
	snprintf(n, sizeof n, "%u", num);
	const char *kv[] = { "partNumber", n, "uploadId", uid };
	if (cbi_s3_query(kv, 2, q, sizeof q) < 0)
		return cbi_err(err, -ENAMETOOLONG, "upload id too long");
	buf eb = { .max = 1 << 16 };
	req r = { .method = "PUT", .key = key, .query = q, .body = data, .fd = fd, .foff = foff, .body_len = len,
		  .resp = &eb, .out_fd = -1 };
	int rc = do_req(s, &r, err);
	free(eb.p);
	if (!rc && !r.etag[0])
		rc = cbi_err(err, -EIO, "s3://%s/%s: part %u: no ETag in the answer", s->bucket, key, num);
	if (!rc)
		memcpy(etag, r.etag, CBI_S3_ETAG_MAX);
	return rc;
}

int cbi_s3_mpu_part(cbi_s3 *s, const char *key, const char *uid, uint32_t num, const void *data, size_t len,
		    char etag[CBI_S3_ETAG_MAX], cbi_error *err)
{
	return mpu_part(s, key, uid, num, data ? data : "", -1, 0, len, etag, err);
}

int cbi_s3_mpu_complete(cbi_s3 *s, const char *key, const char *uid, const char (*etags)[CBI_S3_ETAG_MAX],
			uint32_t n, cbi_error *err)
{
	char q[600];
	const char *kv[] = { "uploadId", uid };
	if (cbi_s3_query(kv, 1, q, sizeof q) < 0)
		return cbi_err(err, -ENAMETOOLONG, "upload id too long");
	size_t cap = 128 + (size_t)n * (64 + CBI_S3_ETAG_MAX), o = 0;
	char *x = malloc(cap);
	if (!x)
		return cbi_err(err, -ENOMEM, "out of memory");
	o += (size_t)snprintf(x + o, cap - o, "<CompleteMultipartUpload>");
	for (uint32_t i = 0; i < n; i++)
		o += (size_t)snprintf(x + o, cap - o, "<Part><PartNumber>%u</PartNumber><ETag>%s</ETag></Part>", i + 1,
				      etags[i]);
	o += (size_t)snprintf(x + o, cap - o, "</CompleteMultipartUpload>");
	buf b = { .max = 1 << 20 };
	req c = { .method = "POST", .key = key, .query = q, .body = x, .body_len = o, .fd = -1, .resp = &b,
		  .out_fd = -1 };
	int rc = do_req(s, &c, err);
	free(x);
	/* a 200 may still carry an <Error> (S3 documents it) */
	if (!rc && b.p && memmem(b.p, b.n, "<Error>", 7)) {
		c.status = 500;
		rc = status_error(s, &c, err);
	}
	free(b.p);
	return rc;
}

typedef struct mp {
	cbi_s3 *s;
	const char *key;
	const char *upload_id;
	int fd;
	uint64_t size, part;
	uint32_t nparts;
	char (*etags)[CBI_S3_ETAG_MAX];
	pthread_mutex_t mu;
	uint32_t next;
	int rc;
	cbi_error err;
} mp;

static void *mp_worker(void *ud)
{
	mp *m = ud;
	for (;;) {
		pthread_mutex_lock(&m->mu);
		uint32_t i = m->rc ? m->nparts : m->next++;
		pthread_mutex_unlock(&m->mu);
		if (i >= m->nparts)
			return NULL;
		uint64_t off = (uint64_t)i * m->part;
		uint64_t len = m->size - off < m->part ? m->size - off : m->part;
		char etag[CBI_S3_ETAG_MAX];
		cbi_error e;
		int rc = mpu_part(m->s, m->key, m->upload_id, i + 1, NULL, m->fd, off, (size_t)len, etag, &e);
		pthread_mutex_lock(&m->mu);
		if (rc && !m->rc) {
			m->rc = rc;
			m->err = e;
		} else if (!rc) {
			memcpy(m->etags[i], etag, sizeof etag);
		}
		pthread_mutex_unlock(&m->mu);
	}
}

static int put_multipart(cbi_s3 *s, const char *key, int fd, uint64_t size, cbi_error *err)
{
	char uid[256] = "";
	int rc;
	/* 10000 parts at most: a larger part for a huge image */
	uint64_t part = s->part;
	while ((size + part - 1) / part > 10000)
		part *= 2;
	if ((rc = cbi_s3_mpu_begin(s, key, uid, sizeof uid, err)))
		return rc;
	mp m = { .s = s, .key = key, .upload_id = uid, .fd = fd, .size = size, .part = part,
		 .nparts = (uint32_t)((size + part - 1) / part) };
	if (!(m.etags = calloc(m.nparts, sizeof *m.etags))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto abort;
	}
	pthread_mutex_init(&m.mu, NULL);
	pthread_t th[POOL_MAX];
	int nth = s->jobs < (int)m.nparts ? s->jobs : (int)m.nparts, started = 0;
	for (int i = 0; i < nth; i++)
		if (!pthread_create(&th[i], NULL, mp_worker, &m))
			started++;
	if (!started)
		mp_worker(&m);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&m.mu);
	if (m.rc) {
		rc = m.rc;
		if (err)
			*err = m.err;
	} else {
		rc = cbi_s3_mpu_complete(s, key, uid, (const char (*)[CBI_S3_ETAG_MAX])m.etags, m.nparts, err);
	}
	free(m.etags);
	if (!rc)
		return 0;
abort:;
	cbi_error ae;
	cbi_s3_abort_upload(s, key, uid, &ae); /* best effort: the next run of the job aborts leftovers */
	return rc;
}

int cbi_s3_put_file(cbi_s3 *s, const char *key, const char *path, int if_none_match, cbi_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return cbi_err(err, -errno, "unable to open '%s': %s", path, strerror(errno));
	struct stat st;
	int rc;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		rc = cbi_err(err, -EINVAL, "'%s' is not a regular file", path);
	} else if ((uint64_t)st.st_size <= s->part) {
		buf eb = { .max = 1 << 16 };
		req r = { .method = "PUT", .key = key, .if_none_match = if_none_match, .fd = fd,
			  .body_len = (size_t)st.st_size, .resp = &eb, .out_fd = -1 };
		rc = do_req(s, &r, err);
		free(eb.p);
	} else {
		/* If-None-Match is not honoured on CompleteMultipartUpload by
		 * RGW 16.2 (issue 18): the caller's keys are unique instead. */
		rc = put_multipart(s, key, fd, (uint64_t)st.st_size, err);
	}
	close(fd);
	return rc;
}

/* -------------------------------------------------- parallel ranged GETs */

typedef struct pg {
	cbi_s3 *s;
	const char *key;
	int fd;
	uint64_t size, chunk;
	uint64_t next;
	pthread_mutex_t mu;
	int rc;
	cbi_error err;
} pg;

static void *pg_worker(void *ud)
{
	pg *g = ud;
	for (;;) {
		pthread_mutex_lock(&g->mu);
		uint64_t off = g->rc ? g->size : g->next;
		g->next += g->chunk;
		pthread_mutex_unlock(&g->mu);
		if (off >= g->size)
			return NULL;
		uint64_t len = g->size - off < g->chunk ? g->size - off : g->chunk;
		char range[96];
		snprintf(range, sizeof range, "bytes=%llu-%llu", (unsigned long long)off,
			 (unsigned long long)(off + len - 1));
		buf eb = { .max = 1 << 16 };
		req r = { .method = "GET", .key = g->key, .range = range, .fd = -1, .resp = &eb, .out_fd = g->fd,
			  .out_off = off };
		cbi_error e;
		int rc = do_req(g->s, &r, &e);
		free(eb.p);
		if (!rc && r.got != len)
			rc = cbi_err(&e, -EIO, "s3://%s/%s: short ranged read at %llu", g->s->bucket, g->key,
				     (unsigned long long)off);
		if (rc) {
			pthread_mutex_lock(&g->mu);
			if (!g->rc) {
				g->rc = rc;
				g->err = e;
			}
			pthread_mutex_unlock(&g->mu);
		}
	}
}

int cbi_s3_get_file(cbi_s3 *s, const char *key, const char *path, int durable, cbi_error *err)
{
	uint64_t size = 0;
	int rc = cbi_s3_head(s, key, &size, err);
	if (rc)
		return rc;
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
	int fd = cbi_create_tmp(tmp, 0600);
	if (fd < 0)
		return cbi_err(err, fd, "unable to create '%s': %s", tmp, cbi_strerror(fd));
	pg g = { .s = s, .key = key, .fd = fd, .size = size, .chunk = s->part };
	pthread_mutex_init(&g.mu, NULL);
	pthread_t th[POOL_MAX];
	uint64_t nchunks = (size + g.chunk - 1) / g.chunk;
	int nth = (uint64_t)s->jobs < nchunks ? s->jobs : (int)nchunks, started = 0;
	for (int i = 0; i < nth; i++)
		if (!pthread_create(&th[i], NULL, pg_worker, &g))
			started++;
	if (!started && nchunks)
		pg_worker(&g);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&g.mu);
	rc = g.rc;
	if (rc && err)
		*err = g.err;
	if (!rc && durable && fsync(fd) < 0)
		rc = cbi_err(err, -errno, "unable to write '%s': %s", tmp, strerror(errno));
	close(fd);
	if (!rc && rename(tmp, path) < 0)
		rc = cbi_err(err, -errno, "unable to rename '%s': %s", tmp, strerror(errno));
	if (rc)
		unlink(tmp);
	return rc;
}

#else /* !CBI_HAVE_CURL */

struct cbi_s3 {
	char bucket[64];
};

static int no_curl(cbi_error *err)
{
	return cbi_err(err, -ENOTSUP, "cbimg was built without libcurl: no S3 support (install "
				      "libcurl4-openssl-dev and rebuild)");
}

const char *cbi_s3_bucket(const cbi_s3 *s) { return s->bucket; }
void cbi_s3_counters(const cbi_s3 *s, uint64_t *a, uint64_t *b) { *a = *b = 0; }
int cbi_s3_open(const cbi_s3_cfg *c, const char *bucket, cbi_s3 **out, cbi_error *err) { return no_curl(err); }
void cbi_s3_close(cbi_s3 *s) { free(s); }
int cbi_s3_put(cbi_s3 *s, const char *k, const void *b, size_t l, int i, cbi_error *err) { return no_curl(err); }
int cbi_s3_put_file(cbi_s3 *s, const char *k, const char *p, int i, cbi_error *err) { return no_curl(err); }
int cbi_s3_get(cbi_s3 *s, const char *k, uint64_t o, uint64_t l, void *b, size_t bs, size_t *g, cbi_error *err)
{
	return no_curl(err);
}
int cbi_s3_get_file(cbi_s3 *s, const char *k, const char *p, int d, cbi_error *err) { return no_curl(err); }
int cbi_s3_head(cbi_s3 *s, const char *k, uint64_t *sz, cbi_error *err) { return no_curl(err); }
int cbi_s3_delete(cbi_s3 *s, const char *k, cbi_error *err) { return no_curl(err); }
int cbi_s3_list(cbi_s3 *s, const char *p, cbi_s3_obj **o, size_t *n, cbi_error *err) { return no_curl(err); }
int cbi_s3_list_uploads(cbi_s3 *s, const char *p, cbi_s3_obj **o, size_t *n, cbi_error *err)
{
	return no_curl(err);
}
int cbi_s3_abort_upload(cbi_s3 *s, const char *k, const char *u, cbi_error *err) { return no_curl(err); }
void cbi_s3_tuning(const cbi_s3 *s, int *jobs, uint64_t *part)
{
	*jobs = 1;
	*part = 16 << 20;
}
int cbi_s3_mpu_begin(cbi_s3 *s, const char *k, char *u, size_t usz, cbi_error *err) { return no_curl(err); }
int cbi_s3_mpu_part(cbi_s3 *s, const char *k, const char *u, uint32_t n, const void *d, size_t l,
		    char etag[CBI_S3_ETAG_MAX], cbi_error *err)
{
	return no_curl(err);
}
int cbi_s3_mpu_complete(cbi_s3 *s, const char *k, const char *u, const char (*e)[CBI_S3_ETAG_MAX], uint32_t n,
			cbi_error *err)
{
	return no_curl(err);
}

#endif
