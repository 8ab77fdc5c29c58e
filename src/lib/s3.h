/* s3.h - a small S3 client on libcurl (CURLOPT_AWS_SIGV4): single PUTs
 * (optionally create-only), multipart uploads streamed from a file, ranged
 * and parallel GETs, LIST (v2, paged), HEAD, DELETE, and the listing and
 * abort of multipart uploads. Path-style addressing on a given endpoint
 * (Ceph RGW, MinIO, ...), virtual-hosted on AWS when no endpoint is given.
 *
 * Requests are retried on 5xx, 429 and transport errors (refused,
 * timed out, reset) with bounded exponential backoff
 * (CBIMG_S3_RETRIES attempts in all, default 5). Every error is one line
 * naming the endpoint, bucket or key and the reason; codes: -EACCES (bad
 * credentials, access denied), -ENOENT (no such key or bucket: the message
 * says which), -EEXIST (a create-only PUT found the key taken),
 * -EHOSTUNREACH (endpoint unreachable), -EIO (anything else). */
#ifndef CBI_S3_H
#define CBI_S3_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct cbi_s3_cfg {
	char endpoint[512]; /* "http://127.0.0.1:7480", or "" for AWS */
	char region[64];
	char access_key[256];
	char secret_key[256];
	char session_token[2048];
} cbi_s3_cfg;

typedef struct cbi_s3 cbi_s3;

#define CBI_S3_ETAG_MAX 128

typedef struct cbi_s3_obj {
	char key[1024];
	uint64_t size;
	char etag[CBI_S3_ETAG_MAX]; /* list only, as the server sent it ("" if none): changes when the object does */
	char upload_id[256]; /* list_uploads only */
} cbi_s3_obj;

/* s3://BUCKET[/PREFIX]: 1 and the parts when url is one (prefix without
 * leading or trailing '/'), 0 when it is not an s3:// URL, -CBI_EUSAGE when
 * it is one but malformed (err says why). */
int cbi_s3_url_parse(const char *url, char *bucket, size_t bsz, char *prefix, size_t psz, cbi_error *err);

/* The configuration from the environment: endpoint (endpoint_opt, else
 * $S3_ENDPOINT, else $AWS_ENDPOINT_URL, else AWS), credentials
 * ($AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, else the profile
 * $AWS_PROFILE or "default" of $AWS_SHARED_CREDENTIALS_FILE or
 * ~/.aws/credentials), region ($AWS_REGION, $AWS_DEFAULT_REGION, the
 * profile's, else us-east-1). -EACCES with a message when there are no
 * credentials. */
int cbi_s3_cfg_load(cbi_s3_cfg *c, const char *endpoint_opt, cbi_error *err);

/* Parse an AWS credentials/config file's text for one profile (the
 * section "[NAME]" or "[profile NAME]"): fills what it finds (leaves the
 * rest); returns 1 when the profile's section exists, else 0. */
int cbi_s3_parse_profile(const char *text, const char *profile, cbi_s3_cfg *c);

/* Percent-encode in as SigV4 wants it (unreserved characters kept, '/'
 * kept when keep_slash). Returns the length, or -ENAMETOOLONG. */
int cbi_s3_uri_encode(const char *in, int keep_slash, char *out, size_t outsz);

/* A canonical query string from n name/value pairs kv[2i], kv[2i+1]
 * (value NULL = empty): each encoded, sorted by name then value, "k=v"
 * joined with '&'. Returns the length or -ENAMETOOLONG. */
int cbi_s3_query(const char *const *kv, size_t n, char *out, size_t outsz);

/* Parse a ListObjectsV2 (or ListMultipartUploads) response: appends the
 * objects (or uploads) to *v (*n, *cap), sets *truncated and the next
 * continuation token (or key marker and upload-id marker). Returns 0, or
 * -EIO for a response that is not such a listing, -ENOMEM. */
int cbi_s3_parse_list(const char *xml, size_t len, int uploads, cbi_s3_obj **v, size_t *n, size_t *cap,
		      int *truncated, char *next, size_t nextsz, char *next2, size_t next2sz);

/* The <Code> and <Message> of an S3 error response (empty when absent). */
void cbi_s3_parse_error(const char *xml, size_t len, char *code, size_t csz, char *msg, size_t msz);

/* A client for one bucket, with a pool of connections (keep-alive). The
 * first request checks nothing: errors come with the requests. */
int cbi_s3_open(const cbi_s3_cfg *c, const char *bucket, cbi_s3 **out, cbi_error *err);
void cbi_s3_close(cbi_s3 *s);

/* Bytes sent (request bodies) and received (response bodies) so far. */
void cbi_s3_counters(const cbi_s3 *s, uint64_t *sent, uint64_t *received);

/* PUT a buffer; if_none_match: create only (-EEXIST when the key exists). */
int cbi_s3_put(cbi_s3 *s, const char *key, const void *buf, size_t len, int if_none_match, cbi_error *err);

/* PUT a file: a single PUT when smaller than a part, else a multipart
 * upload read from the file part by part (CBIMG_S3_PART_MIB, default 16;
 * up to CBIMG_S3_JOBS parts at once, default 4), aborted on failure.
 * Memory: curl's buffers only, whatever the size. *upload_id (optional)
 * receives the id while the upload is open. */
int cbi_s3_put_file(cbi_s3 *s, const char *key, const char *path, int if_none_match, cbi_error *err);

/* GET [off, off+len) of key into buf (len = 0: the whole object up to
 * bufsz); *got the bytes received. */
int cbi_s3_get(cbi_s3 *s, const char *key, uint64_t off, uint64_t len, void *buf, size_t bufsz, size_t *got,
	       cbi_error *err);

/* GET a whole object into a new file path (through path.tmp and rename),
 * in parallel ranged GETs; durable: fsync before the rename (not for a
 * temporary copy, which nothing keeps past the run). */
int cbi_s3_get_file(cbi_s3 *s, const char *key, const char *path, int durable, cbi_error *err);

/* HEAD: 0 and the size, -ENOENT when absent. */
int cbi_s3_head(cbi_s3 *s, const char *key, uint64_t *size, cbi_error *err);

/* DELETE (absent keys are no error). */
int cbi_s3_delete(cbi_s3 *s, const char *key, cbi_error *err);

/* Every object under prefix (all pages); *out is malloc'ed. */
int cbi_s3_list(cbi_s3 *s, const char *prefix, cbi_s3_obj **out, size_t *n, cbi_error *err);

/* Every unfinished multipart upload under prefix; *out malloc'ed. */
int cbi_s3_list_uploads(cbi_s3 *s, const char *prefix, cbi_s3_obj **out, size_t *n, cbi_error *err);
int cbi_s3_abort_upload(cbi_s3 *s, const char *key, const char *upload_id, cbi_error *err);

/* The parts of a multipart upload, one by one (s3up.h streams an image
 * through them). mpu_begin: CreateMultipartUpload, the upload id into
 * uid. mpu_part: part num (1 to 10000; every part but the last at least
 * 5 MiB) from len bytes of data, its ETag into etag; safe from several
 * threads at once. mpu_complete: CompleteMultipartUpload of parts 1 .. n
 * with their ETags (an <Error> in a 200 answer is an error). None aborts
 * the upload on failure: cbi_s3_abort_upload() does. */
int cbi_s3_mpu_begin(cbi_s3 *s, const char *key, char *uid, size_t uidsz, cbi_error *err);
int cbi_s3_mpu_part(cbi_s3 *s, const char *key, const char *uid, uint32_t num, const void *data, size_t len,
		    char etag[CBI_S3_ETAG_MAX], cbi_error *err);
int cbi_s3_mpu_complete(cbi_s3 *s, const char *key, const char *uid, const char (*etags)[CBI_S3_ETAG_MAX],
			uint32_t n, cbi_error *err);

/* The client's tuning: parallel transfers (CBIMG_S3_JOBS) and part size
 * in bytes (CBIMG_S3_PART_MIB). */
void cbi_s3_tuning(const cbi_s3 *s, int *jobs, uint64_t *part);

/* "s3://bucket/key" for messages. */
const char *cbi_s3_bucket(const cbi_s3 *s);

#endif
