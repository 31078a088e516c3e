/* agent/url.c — the --server URL: https://HOST[:PORT][/], parsed by http-parser. */
#include "agent_internal.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#define URL_MAX_BYTES 2048

bool nhi_agent_dns_name_ok(const char *h, size_t len)
{
	size_t i, label = 0;
	bool ok = len > 0 && len <= NHI_AGENT_HOST_MAX_BYTES;

	for (i = 0; i < len && ok; i++) {
		char ch = h[i];

		if (ch == '.') {
			ok = label > 0;
			label = 0;
		} else {
			ok = ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
			      ch == '-') &&
			     ++label <= 63;
		}
	}
	return ok;
}

nhi_agent_err nhi_agent_parse_url(const char *url, char *host, size_t host_size, uint16_t *port)
{
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	struct http_parser_url u;
	const char *h;
	size_t url_len, hlen;
	bool bracketed;
	unsigned char v6[16];

	AG_CHECK(url != NULL && host != NULL && port != NULL && host_size > 0, NHI_AGENT_E_ARG,
		 "parse_url: missing argument");
	host[0] = '\0';
	url_len = strnlen(url, URL_MAX_BYTES + 1);
	AG_CHECK(url_len > 0 && url_len <= URL_MAX_BYTES, NHI_AGENT_E_ARG,
		 "server URL is empty or longer than %d bytes: use https://HOST:PORT", URL_MAX_BYTES);
	http_parser_url_init(&u);
	AG_CHECK(http_parser_parse_url(url, url_len, 0, &u) == 0, NHI_AGENT_E_ARG,
		 "server URL '%.200s' is not a valid URL: use https://HOST:PORT", url);
	AG_CHECK((u.field_set & (1 << UF_SCHEMA)) && u.field_data[UF_SCHEMA].len == 5 &&
			 strncasecmp(url + u.field_data[UF_SCHEMA].off, "https", 5) == 0,
		 NHI_AGENT_E_ARG, "server URL '%.200s' must start with https:// (the agent only speaks mTLS)", url);
	AG_CHECK(!(u.field_set & (1 << UF_USERINFO)), NHI_AGENT_E_ARG,
		 "server URL '%.200s' carries user info: the agent authenticates with its certificate only", url);
	AG_CHECK(!(u.field_set & ((1 << UF_QUERY) | (1 << UF_FRAGMENT))) &&
			 (!(u.field_set & (1 << UF_PATH)) ||
			  (u.field_data[UF_PATH].len == 1 && url[u.field_data[UF_PATH].off] == '/')),
		 NHI_AGENT_E_ARG, "server URL '%.200s' has a path, query or fragment: give only https://HOST:PORT",
		 url);
	AG_CHECK((u.field_set & (1 << UF_HOST)) && u.field_data[UF_HOST].len > 0, NHI_AGENT_E_ARG,
		 "server URL '%.200s' has no host", url);
	h = url + u.field_data[UF_HOST].off;
	hlen = u.field_data[UF_HOST].len;
	bracketed = u.field_data[UF_HOST].off > 0 && h[-1] == '[';
	AG_CHECK(hlen < host_size && hlen <= NHI_AGENT_HOST_MAX_BYTES, NHI_AGENT_E_ARG,
		 "server URL host is longer than %d bytes", NHI_AGENT_HOST_MAX_BYTES);
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	if (bracketed)
		AG_CHECK(inet_pton(AF_INET6, host, v6) == 1, NHI_AGENT_E_ARG,
			 "server URL host [%s] is not an IPv6 address (zone ids are not supported)", host);
	else
		AG_CHECK(nhi_agent_dns_name_ok(host, hlen), NHI_AGENT_E_ARG,
			 "server URL host '%s' is not a DNS name or IPv4 address", host);
	if (u.field_set & (1 << UF_PORT)) {
		AG_CHECK(u.port != 0, NHI_AGENT_E_ARG, "server URL '%.200s': port 0 is not a port", url);
		*port = u.port;
	} else {
		*port = NHI_AGENT_PORT_DEFAULT;
	}
	rv = NHI_AGENT_OK;
out:
	if (rv != NHI_AGENT_OK && host != NULL && host_size > 0)
		host[0] = '\0';
	return rv;
}
