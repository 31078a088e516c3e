/* tests/fuzz/transcript.c — ceremony transcript verification on hostile input. */
#include "../../provisioning/prov_internal.h"

#include <openssl/pem.h>
#include <stdlib.h>

/* the root of a dev ceremony whose transcript is in the seed corpus, so the
 * signature path runs too (public material only) */
static const char root_pem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIBwDCCAWagAwIBAgIQVzfxwdsKxFK9XRnzDykH9jAKBggqhkjOPQQDAjAuMREw\n"
	"DwYDVQQKDAhuaGlkIGRldjEZMBcGA1UEAwwQbmhpZCBkZXYgcm9vdCBDQTAeFw0y\n"
	"NjExMjMxNTAzNTlaFw0zNjExMjAxNTA0NTlaMC4xETAPBgNVBAoMCG5oaWQgZGV2\n"
	"MRkwFwYDVQQDDBBuaGlkIGRldiByb290IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0D\n"
	"AQcDQgAEN4wdoNSro+SbiIpw+1K3luC5/UMNbwGhyZGhiPSe/44iMbWTbr/AxmmF\n"
	"5hXDYMA1w7R/YIq19naAhUsUGEyABqNmMGQwEgYDVR0TAQH/BAgwBgEB/wIBADAO\n"
	"BgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYEFA/NZRfOZvicjUG8kBYGVk536XYCMB8G\n"
	"A1UdIwQYMBaAFA/NZRfOZvicjUG8kBYGVk536XYCMAoGCCqGSM49BAMCA0gAMEUC\n"
	"IQC8rRdpqlCk8i9QASUM2rPZw2mMut5ax1vGq4+FmvqtugIgFwZOh2MszwnKdOxB\n"
	"A/wrYDo8RjJ5g9V0x2tjQ+dRDKo=\n"
	"-----END CERTIFICATE-----\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static X509 *root;
	static int loaded;
	size_t n = 0;

	if (!loaded) {
		BIO *b = BIO_new_mem_buf(root_pem, -1);

		root = PEM_read_bio_X509(b, NULL, NULL, NULL);
		BIO_free(b);
		if (root == NULL)
			abort();
		loaded = 1;
	}
	if (nhi_transcript_verify(data, size, root, &n) == NHI_OK && n == 0)
		abort(); /* success must mean at least the signature record */
	return 0;
}
