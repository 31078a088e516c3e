/* provisioning/backup.c — placeholder until its issue lands. */
#include "nhictl.h"

#include <stdio.h>

int nhictl_backup(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "nhictl backup: not built yet\n");
	return 2;
}
