/* test_s3.c - the S3 client's parts that need no server (URLs, SigV4's
 * encoding and query order, credential files, listing and error XML), and,
 * when CBIMG_S3_TEST_BUCKET names a bucket on $S3_ENDPOINT (tests/s3/rgw.sh
 * sets one up), every operation against the real server. */
#include "testutil.h"

#include "s3.h"

static void test_url_parse(void **state)
{
	(void)state;
	char b[64], p[600];
	cbi_error e;
	assert_int_equal(cbi_s3_url_parse("/backup", b, sizeof b, p, sizeof p, &e), 0);
	assert_int_equal(cbi_s3_url_parse("s3://bkt/a/b/", b, sizeof b, p, sizeof p, &e), 1);
	assert_string_equal(b, "bkt");
	assert_string_equal(p, "a/b");
	assert_int_equal(cbi_s3_url_parse("s3://bkt", b, sizeof b, p, sizeof p, &e), 1);
	assert_string_equal(p, "");
	assert_int_equal(cbi_s3_url_parse("s3://bkt//x", b, sizeof b, p, sizeof p, &e), 1);
	assert_string_equal(p, "x");
	assert_int_equal(cbi_s3_url_parse("s3://b/x", b, sizeof b, p, sizeof p, &e), -CBI_EUSAGE);
	assert_non_null(strstr(e.msg, "3 to 63"));
	assert_int_equal(cbi_s3_url_parse("s3://Bkt/x", b, sizeof b, p, sizeof p, &e), -CBI_EUSAGE);
	assert_int_equal(cbi_s3_url_parse("s3://bkt/a/../b", b, sizeof b, p, sizeof p, &e), -CBI_EUSAGE);
	assert_int_equal(cbi_s3_url_parse("s3://bkt/a//b", b, sizeof b, p, sizeof p, &e), -CBI_EUSAGE);
}

static void test_uri_encode(void **state)
{
	(void)state;
	char o[64];
	assert_int_equal(cbi_s3_uri_encode("a-b_c.d~E/f g+h=", 1, o, sizeof o), 22);
	assert_string_equal(o, "a-b_c.d~E/f%20g%2Bh%3D");
	cbi_s3_uri_encode("a/b", 0, o, sizeof o);
	assert_string_equal(o, "a%2Fb");
	cbi_s3_uri_encode("\xc3\xa9", 0, o, sizeof o); /* UTF-8 bytes, upper-case hex */
	assert_string_equal(o, "%C3%A9");
	assert_int_equal(cbi_s3_uri_encode("abcd", 0, o, 4), -ENAMETOOLONG);
	assert_int_equal(cbi_s3_uri_encode("abc", 0, o, 4), 3);
	assert_int_equal(cbi_s3_uri_encode(" ", 0, o, 3), -ENAMETOOLONG);
}

static void test_query_sorted(void **state)
{
	(void)state;
	char q[256];
	/* the order SigV4 wants: by encoded name; empty values keep their '=' */
	const char *kv[] = { "prefix", "a b/", "list-type", "2", "continuation-token", "x+y=" };
	assert_true(cbi_s3_query(kv, 3, q, sizeof q) > 0);
	assert_string_equal(q, "continuation-token=x%2By%3D&list-type=2&prefix=a%20b%2F");
	const char *kv2[] = { "uploads", NULL, "prefix", "p" };
	cbi_s3_query(kv2, 2, q, sizeof q);
	assert_string_equal(q, "prefix=p&uploads=");
	const char *kv3[] = { "uploadId", "Zz", "partNumber", "10" };
	cbi_s3_query(kv3, 2, q, sizeof q);
	assert_string_equal(q, "partNumber=10&uploadId=Zz"); /* upper case sorts first */
	assert_int_equal(cbi_s3_query(kv, 3, q, 10), -ENAMETOOLONG);
}

static void test_profile(void **state)
{
	(void)state;
	const char *text = "# comment\n[default]\naws_access_key_id = DEF\naws_secret_access_key=defsecret\n\n"
			   "[profile work]\r\n  aws_access_key_id=WORK  \r\naws_secret_access_key = w=s\r\n"
			   "region = eu-west-3\r\n[other]\naws_access_key_id=OTHER\n";
	cbi_s3_cfg c;
	memset(&c, 0, sizeof c);
	assert_int_equal(cbi_s3_parse_profile(text, "work", &c), 1);
	assert_string_equal(c.access_key, "WORK");
	assert_string_equal(c.secret_key, "w=s"); /* only the first '=' splits */
	assert_string_equal(c.region, "eu-west-3");
	memset(&c, 0, sizeof c);
	assert_int_equal(cbi_s3_parse_profile(text, "default", &c), 1);
	assert_string_equal(c.access_key, "DEF");
	assert_string_equal(c.secret_key, "defsecret");
	assert_string_equal(c.region, "");
	memset(&c, 0, sizeof c);
	assert_int_equal(cbi_s3_parse_profile(text, "nope", &c), 0);
	assert_string_equal(c.access_key, "");
}

static const char *const env_names[] = { "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT", "AWS_REGION",
					 "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_ENDPOINT_URL",
					 "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE" };
#define N_ENV (sizeof env_names / sizeof env_names[0])

static void test_cfg_env(void **state)
{
	(void)state;
	char *saved[N_ENV];
	for (size_t i = 0; i < N_ENV; i++)
		saved[i] = getenv(env_names[i]) ? strdup(getenv(env_names[i])) : NULL;
	char dir[] = "/tmp/cbimg-s3-XXXXXX", path[128];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/creds", dir);
	FILE *f = fopen(path, "w");
	fputs("[p1]\naws_access_key_id=K1\naws_secret_access_key=S1\n", f);
	fclose(f);
	cbi_s3_cfg c;
	cbi_error e;
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("S3_ENDPOINT");
	unsetenv("AWS_REGION");
	unsetenv("AWS_DEFAULT_REGION");
	setenv("AWS_CONFIG_FILE", "/nonexistent", 1);
	setenv("AWS_ENDPOINT_URL", "http://h:9/", 1);
	setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
	setenv("AWS_PROFILE", "p1", 1);
	assert_int_equal(cbi_s3_cfg_load(&c, NULL, &e), 0);
	assert_string_equal(c.access_key, "K1");
	assert_string_equal(c.endpoint, "http://h:9"); /* trailing '/' dropped */
	assert_string_equal(c.region, "us-east-1");
	assert_int_equal(cbi_s3_cfg_load(&c, "https://o:1", &e), 0);
	assert_string_equal(c.endpoint, "https://o:1"); /* the option wins */
	setenv("AWS_PROFILE", "p2", 1);
	assert_int_equal(cbi_s3_cfg_load(&c, NULL, &e), -EACCES);
	assert_non_null(strstr(e.msg, "'p2'"));
	assert_null(strchr(e.msg, '\n'));
	unsetenv("AWS_PROFILE");
	setenv("AWS_ACCESS_KEY_ID", "EK", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "ES", 1);
	setenv("AWS_REGION", "r9", 1);
	assert_int_equal(cbi_s3_cfg_load(&c, "ftp://x", &e), -CBI_EUSAGE);
	assert_int_equal(cbi_s3_cfg_load(&c, NULL, &e), 0);
	assert_string_equal(c.access_key, "EK");
	assert_string_equal(c.region, "r9");
	for (size_t i = 0; i < N_ENV; i++) { /* the server test's environment, as it was */
		if (saved[i])
			setenv(env_names[i], saved[i], 1);
		else
			unsetenv(env_names[i]);
		free(saved[i]);
	}
	unlink(path);
	rmdir(dir);
}

static void test_parse_list(void **state)
{
	(void)state;
	const char *x = "<?xml version=\"1.0\"?><ListBucketResult><Name>b</Name><IsTruncated>true</IsTruncated>"
			"<Contents><Key>p/a&amp;b.cbx</Key><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>10</Size></Contents>"
			"<Contents><Key>p/&#233;.cbi</Key><LastModified>x</LastModified><Size>18446744073709551615</Size>"
			"</Contents><NextContinuationToken>tok/1=</NextContinuationToken></ListBucketResult>";
	cbi_s3_obj *v = NULL;
	size_t n = 0, cap = 0;
	int tr;
	char next[64];
	assert_int_equal(cbi_s3_parse_list(x, strlen(x), 0, &v, &n, &cap, &tr, next, sizeof next, NULL, 0), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[0].key, "p/a&b.cbx");
	assert_int_equal(v[0].size, 10);
	assert_string_equal(v[0].etag, "\"9b2cf535f27731c974343645a3985328\"");
	assert_string_equal(v[1].etag, ""); /* none sent */
	assert_string_equal(v[1].key, "p/\xc3\xa9.cbi");
	assert_true(v[1].size == UINT64_MAX);
	assert_int_equal(tr, 1);
	assert_string_equal(next, "tok/1=");
	/* truncated without a token: refused (it would loop) */
	const char *y = "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
	assert_int_equal(cbi_s3_parse_list(y, strlen(y), 0, &v, &n, &cap, &tr, next, sizeof next, NULL, 0), -EIO);
	/* a size that is not a number, a key missing, an error document */
	const char *z = "<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents></ListBucketResult>";
	assert_int_equal(cbi_s3_parse_list(z, strlen(z), 0, &v, &n, &cap, &tr, next, sizeof next, NULL, 0), -EIO);
	const char *w = "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>";
	assert_int_equal(cbi_s3_parse_list(w, strlen(w), 0, &v, &n, &cap, &tr, next, sizeof next, NULL, 0), -EIO);
	const char *er = "<Error><Code>NoSuchBucket</Code></Error>";
	assert_int_equal(cbi_s3_parse_list(er, strlen(er), 0, &v, &n, &cap, &tr, next, sizeof next, NULL, 0), -EIO);
	/* uploads */
	const char *u = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated><Upload><Key>p/x.cbi</Key>"
			"<UploadId>2~abc</UploadId></Upload></ListMultipartUploadsResult>";
	char n2[64];
	size_t before = n;
	assert_int_equal(cbi_s3_parse_list(u, strlen(u), 1, &v, &n, &cap, &tr, next, sizeof next, n2, sizeof n2), 0);
	assert_int_equal(n, before + 1);
	assert_string_equal(v[n - 1].upload_id, "2~abc");
	assert_int_equal(tr, 0);
	free(v);
}

static void test_parse_error(void **state)
{
	(void)state;
	char c[64], m[64];
	const char *x = "<Error><Code>SignatureDoesNotMatch</Code><Message>bad &lt;sig&gt;</Message></Error>";
	cbi_s3_parse_error(x, strlen(x), c, sizeof c, m, sizeof m);
	assert_string_equal(c, "SignatureDoesNotMatch");
	assert_string_equal(m, "bad <sig>");
	cbi_s3_parse_error("", 0, c, sizeof c, m, sizeof m);
	assert_string_equal(c, "");
	cbi_s3_parse_error("<Code>&bogus;</Code>", 20, c, sizeof c, m, sizeof m);
	assert_string_equal(c, "");
}

/* ----------------------------------------------- against a real server */

static void test_server(void **state)
{
	(void)state;
	const char *bucket = tu_s3_bucket();
	cbi_s3_cfg c;
	cbi_error e;
	cbi_s3 *s;
	assert_int_equal(cbi_s3_cfg_load(&c, NULL, &e), 0);
	assert_int_equal(cbi_s3_open(&c, bucket, &s, &e), 0);
	/* create-only PUT: once */
	int prc = cbi_s3_put(s, "u/x y+z", "hello", 5, 1, &e);
	if (prc)
		printf("put: %s\n", e.msg);
	assert_int_equal(prc, 0);
	assert_int_equal(cbi_s3_put(s, "u/x y+z", "HELLO", 5, 1, &e), -EEXIST);
	char b[64];
	size_t got;
	assert_int_equal(cbi_s3_get(s, "u/x y+z", 1, 3, b, sizeof b, &got, &e), 0);
	assert_int_equal(got, 3);
	assert_memory_equal(b, "ell", 3);
	uint64_t sz;
	assert_int_equal(cbi_s3_head(s, "u/x y+z", &sz, &e), 0);
	assert_int_equal(sz, 5);
	assert_int_equal(cbi_s3_head(s, "u/none", &sz, &e), -ENOENT);
	/* a multipart upload of 3 parts (5 MiB each, the minimum), read back in ranges */
	setenv("CBIMG_S3_PART_MIB", "5", 1);
	cbi_s3 *s5;
	assert_int_equal(cbi_s3_open(&c, bucket, &s5, &e), 0);
	char dir[] = "/tmp/cbimg-s3-XXXXXX", path[128], back[128];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/big", dir);
	snprintf(back, sizeof back, "%s/back", dir);
	size_t big = (size_t)12 << 20;
	uint8_t *d = malloc(big), *d2 = malloc(big);
	tu_fill_random(d, big, 7);
	FILE *f = fopen(path, "w");
	assert_int_equal(fwrite(d, 1, big, f), big);
	fclose(f);
	assert_int_equal(cbi_s3_put_file(s5, "u/big", path, 1, &e), 0);
	assert_int_equal(cbi_s3_get_file(s5, "u/big", back, 1, &e), 0);
	f = fopen(back, "r");
	assert_int_equal(fread(d2, 1, big, f), big);
	fclose(f);
	assert_memory_equal(d, d2, big);
	/* LIST pages (1000 keys a page on RGW): 3 objects here */
	cbi_s3_obj *v;
	size_t n;
	assert_int_equal(cbi_s3_list(s, "u/", &v, &n, &e), 0);
	assert_int_equal(n, 2);
	free(v);
	/* an upload left open is listed, then aborted */
	assert_int_equal(cbi_s3_list_uploads(s, "u/", &v, &n, &e), 0);
	assert_int_equal(n, 0);
	free(v);
	assert_int_equal(cbi_s3_delete(s, "u/big", &e), 0);
	assert_int_equal(cbi_s3_delete(s, "u/big", &e), 0); /* absent: fine */
	assert_int_equal(cbi_s3_delete(s, "u/x y+z", &e), 0);
	/* a missing bucket, and bad credentials: one line each */
	cbi_s3 *nb;
	assert_int_equal(cbi_s3_open(&c, "cbimg-no-such-bucket", &nb, &e), 0);
	assert_int_equal(cbi_s3_list(nb, "", &v, &n, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "does not exist"));
	cbi_s3_close(nb);
	cbi_s3_cfg bad = c;
	strcpy(bad.secret_key, "wrong");
	assert_int_equal(cbi_s3_open(&bad, bucket, &nb, &e), 0);
	assert_int_equal(cbi_s3_list(nb, "", &v, &n, &e), -EACCES);
	assert_non_null(strstr(e.msg, "access denied"));
	assert_null(strchr(e.msg, '\n'));
	cbi_s3_close(nb);
	unlink(path);
	unlink(back);
	rmdir(dir);
	free(d);
	free(d2);
	cbi_s3_close(s5);
	cbi_s3_close(s);
	unsetenv("CBIMG_S3_PART_MIB");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_url_parse),   cmocka_unit_test(test_uri_encode),
		cmocka_unit_test(test_query_sorted), cmocka_unit_test(test_profile),
		cmocka_unit_test(test_cfg_env),      cmocka_unit_test(test_parse_list),
		cmocka_unit_test(test_parse_error),  cmocka_unit_test(test_server),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
