/* provisioning/token.c — placeholder until its issue lands. */
#include "nhictl.h"

#include <stdio.h>

int nhictl_token(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "nhictl token: not built yet\n");
	return 2;
}
