/* provisioning/ceremony.c — placeholder, being written. */
#include "nhictl.h"

#include <stdio.h>

int nhictl_ceremony(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "nhictl ceremony: not built yet\n");
	return 2;
}
