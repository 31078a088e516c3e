/* provisioning/enroll.c — placeholder, being written. */
#include "nhictl.h"

#include <stdio.h>

int nhictl_enroll(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "nhictl enroll: not built yet\n");
	return 2;
}
