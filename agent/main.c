/*
 * agent/main.c — nhi-agent, the command line over agent.h:
 *
 *   nhi-agent [--server https://HOST:PORT] --ca FILE --cert FILE --key FILE
 *             [--servername NAME] [--timeout SECONDS] COMMAND
 *     token --aud AUDIENCE [--ttl SECONDS]   print a token (stdout)
 *     resolve TOKEN|-                        print {"agent":..,"claims":..} (stdout)
 *     health                                 print "ok" when the server is healthy
 *     jwks                                   print the server's JWK set (stdout)
 *
 * Exit status: 0 done, 1 refused or failed (the cause on stderr), 2 usage.
 * Tokens go to stdout only, never to stderr; a token to resolve can be read from
 * stdin ("-") so that it does not show in the process list.
 */
#include "agent.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <mbedtls/platform_util.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_USAGE 2
#define DEFAULT_SERVER "https://127.0.0.1:8443"
#define ALLOC_HEADER_BYTES 16 /* keeps jansson's blocks max_align_t aligned */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: nhi-agent [--server https://HOST:PORT] --ca FILE --cert FILE --key FILE\n"
		"                 [--servername NAME] [--timeout SECONDS] COMMAND\n"
		"commands:\n"
		"  token --aud AUDIENCE [--ttl SECONDS]  print a token for this agent (stdout)\n"
		"  resolve TOKEN|-                       print the agent and claims behind a token\n"
		"                                        (needs the resolver role; '-' reads stdin)\n"
		"  health                                print 'ok' when the server is healthy\n"
		"  jwks                                  print the server's token-signing keys\n"
		"options:\n"
		"  --server URL        nhid's address (default " DEFAULT_SERVER ")\n"
		"  --ca FILE           the deployment's ca.crt, to verify the server\n"
		"  --cert FILE         this agent's certificate; --key FILE its key (mode 0600)\n"
		"  --servername NAME   name or IP the server certificate must carry (default: HOST)\n"
		"  --timeout SECONDS   bound on connect and on each request (default %d s)\n"
		"exit status: 0 ok, 1 refused or failed, 2 usage\n",
		NHI_AGENT_IO_TIMEOUT_MS_DEFAULT / 1000);
}

/* jansson copies tokens into its own blocks: have it wipe every block it frees */
static void *wiping_malloc(size_t n)
{
	unsigned char *p = NULL;

	if (n <= SIZE_MAX - ALLOC_HEADER_BYTES)
		p = malloc(n + ALLOC_HEADER_BYTES);
	if (p != NULL) {
		memcpy(p, &n, sizeof(n));
		p += ALLOC_HEADER_BYTES;
	}
	return p;
}

static void wiping_free(void *ptr)
{
	unsigned char *p;
	size_t n;

	if (ptr == NULL)
		return;
	p = (unsigned char *)ptr - ALLOC_HEADER_BYTES;
	memcpy(&n, p, sizeof(n));
	mbedtls_platform_zeroize(p, n + ALLOC_HEADER_BYTES);
	free(p);
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
	char *end = NULL;
	unsigned long v = 0;
	int rv = -1;

	if (s == NULL || *s < '0' || *s > '9')
		goto out;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		goto out;
	*out = v;
	rv = 0;
out:
	return rv;
}

/*
 * A token from stdin: one line, surrounding whitespace dropped. Returns NULL, or why there
 * is no token: nothing read, more than fits, or more than one token-like word (a second
 * line, a space inside), which a JWS never holds.
 */
_Static_assert(NHI_AGENT_TOKEN_MAX_BYTES == 8192, "the stdin message names 8190 bytes");
static const char *read_token_stdin(char *buf, size_t size)
{
	size_t n = fread(buf, 1, size - 1, stdin), start = 0, i;
	const char *why = NULL;

	if (ferror(stdin)) {
		why = "stdin could not be read";
		goto out;
	}
	if (n == size - 1) {
		why = "the token on stdin is longer than 8190 bytes"; /* NHI_AGENT_TOKEN_MAX_BYTES - 2 */
		goto out;
	}
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		buf[--n] = '\0';
	while (start < n && (buf[start] == ' ' || buf[start] == '\t' || buf[start] == '\n' || buf[start] == '\r'))
		start++;
	memmove(buf, buf + start, n - start + 1);
	n -= start;
	if (n == 0) {
		why = "no token on stdin";
		goto out;
	}
	for (i = 0; i < n; i++) {
		if ((unsigned char)buf[i] <= ' ' || buf[i] == 0x7f) {
			why = "stdin holds more than one token: give the token alone, on one line";
			goto out;
		}
	}
out:
	return why;
}

static void fail_msg(nhi_agent_err e)
{
	fprintf(stderr, "nhi-agent: %s (%s)\n", nhi_agent_error(), nhi_agent_err_name(e));
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"server", required_argument, NULL, 's'},  {"ca", required_argument, NULL, 'a'},
		{"cert", required_argument, NULL, 'c'},    {"key", required_argument, NULL, 'k'},
		{"servername", required_argument, NULL, 'n'}, {"timeout", required_argument, NULL, 't'},
		{"aud", required_argument, NULL, 'u'},     {"ttl", required_argument, NULL, 'l'},
		{"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
	};
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c = NULL;
	const char *server = DEFAULT_SERVER, *aud = NULL, *cmd, *arg = NULL;
	char host[NHI_AGENT_HOST_MAX_BYTES + 1];
	char *token = NULL, *json = NULL;
	unsigned long ttl = 0, timeout_s = 0;
	long long exp = 0;
	nhi_agent_err e;
	int rc = EXIT_USAGE, opt;
	bool have_ttl = false;

	/* no copy of a token lingers in a stdio buffer */
	setvbuf(stdout, NULL, _IONBF, 0);
	json_set_alloc_funcs(wiping_malloc, wiping_free);
	memset(&cfg, 0, sizeof(cfg));
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 's': server = optarg; break;
		case 'a': cfg.ca_file = optarg; break;
		case 'c': cfg.cert_file = optarg; break;
		case 'k': cfg.key_file = optarg; break;
		case 'n': cfg.servername = optarg; break;
		case 'u': aud = optarg; break;
		case 't':
			if (parse_uint(optarg, 1, NHI_AGENT_TIMEOUT_MS_MAX / 1000, &timeout_s) != 0) {
				fprintf(stderr, "nhi-agent: --timeout takes whole seconds, 1..%d\n",
					NHI_AGENT_TIMEOUT_MS_MAX / 1000);
				goto out;
			}
			break;
		case 'l':
			if (parse_uint(optarg, 1, NHI_AGENT_TTL_MAX_S, &ttl) != 0) {
				fprintf(stderr, "nhi-agent: --ttl takes whole seconds, 1..%d\n", NHI_AGENT_TTL_MAX_S);
				goto out;
			}
			have_ttl = true;
			break;
		case 'h':
			usage(stdout);
			rc = 0;
			goto out;
		default:
			usage(stderr);
			goto out;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "nhi-agent: no command given\n");
		usage(stderr);
		goto out;
	}
	cmd = argv[optind++];
	if (strcmp(cmd, "resolve") == 0 && optind < argc)
		arg = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "nhi-agent: unexpected argument '%.40s'\n", argv[optind]);
		goto out;
	}
	if (strcmp(cmd, "token") != 0 && strcmp(cmd, "resolve") != 0 && strcmp(cmd, "health") != 0 &&
	    strcmp(cmd, "jwks") != 0) {
		fprintf(stderr, "nhi-agent: unknown command '%.40s'\n", cmd);
		usage(stderr);
		goto out;
	}
	if ((aud != NULL || have_ttl) && strcmp(cmd, "token") != 0) {
		fprintf(stderr, "nhi-agent: --aud and --ttl belong to the token command\n");
		goto out;
	}
	if (strcmp(cmd, "token") == 0 && aud == NULL) {
		fprintf(stderr, "nhi-agent: token needs --aud AUDIENCE\n");
		goto out;
	}
	if (strcmp(cmd, "resolve") == 0 && arg == NULL) {
		fprintf(stderr, "nhi-agent: resolve needs a TOKEN argument, or '-' to read it from stdin\n");
		goto out;
	}
	if (cfg.ca_file == NULL || cfg.cert_file == NULL || cfg.key_file == NULL) {
		fprintf(stderr, "nhi-agent: --ca, --cert and --key are required (the server requires mTLS)\n");
		goto out;
	}
	if (nhi_agent_parse_url(server, host, sizeof(host), &cfg.port) != NHI_AGENT_OK) {
		fprintf(stderr, "nhi-agent: %s\n", nhi_agent_error());
		goto out;
	}
	cfg.host = host;
	cfg.connect_timeout_ms = (unsigned)timeout_s * 1000;
	cfg.io_timeout_ms = (unsigned)timeout_s * 1000;

	rc = EXIT_FAILURE;
	token = calloc(1, NHI_AGENT_TOKEN_MAX_BYTES);
	if (token == NULL) {
		fprintf(stderr, "nhi-agent: out of memory\n");
		goto out;
	}
	if (strcmp(cmd, "resolve") == 0 && strcmp(arg, "-") == 0) {
		const char *why = read_token_stdin(token, NHI_AGENT_TOKEN_MAX_BYTES);

		if (why != NULL) {
			fprintf(stderr, "nhi-agent: %s\n", why);
			goto out;
		}
		arg = token;
	}
	e = nhi_agent_client_new(&cfg, &c);
	if (e != NHI_AGENT_OK) {
		fail_msg(e);
		goto out;
	}
	if (strcmp(cmd, "token") == 0) {
		e = nhi_agent_get_token(c, aud, (unsigned)ttl, token, NHI_AGENT_TOKEN_MAX_BYTES, &exp);
		if (e == NHI_AGENT_OK)
			printf("%s\n", token);
	} else if (strcmp(cmd, "resolve") == 0) {
		e = nhi_agent_resolve(c, arg, &json);
		if (e == NHI_AGENT_OK)
			printf("%s\n", json);
	} else if (strcmp(cmd, "jwks") == 0) {
		e = nhi_agent_jwks(c, &json);
		if (e == NHI_AGENT_OK)
			printf("%s\n", json);
	} else {
		e = nhi_agent_health(c);
		if (e == NHI_AGENT_OK)
			printf("ok\n");
	}
	if (e != NHI_AGENT_OK) {
		fail_msg(e);
		goto out;
	}
	if (fflush(stdout) != 0) {
		fprintf(stderr, "nhi-agent: cannot write to stdout: %s\n", strerror(errno));
		goto out;
	}
	rc = 0;
out:
	nhi_agent_client_free(c);
	free(json);
	if (token != NULL) {
		mbedtls_platform_zeroize(token, NHI_AGENT_TOKEN_MAX_BYTES);
		free(token);
	}
	return rc;
}
