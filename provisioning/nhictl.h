/*
 * provisioning/nhictl.h — the operator tool's subcommands, one per file
 * (STYLE.md). Each takes argv after the subcommand name (argv[0] is the name) and
 * returns the process exit status: 0 ok, 1 failure (message printed), 2 usage.
 */
#ifndef NHICTL_H
#define NHICTL_H

#include "../common/nhi.h"

#include <stdio.h>

int nhictl_hsm_init(int argc, char **argv); /* hsm_init.c: initialise a token */
int nhictl_ceremony(int argc, char **argv); /* ceremony.c: key ceremony, transcript verify */
int nhictl_enroll(int argc, char **argv);   /* enroll.c: agent key + client cert */
int nhictl_backup(int argc, char **argv);   /* backup.c: identity backup create/inspect/verify */
int nhictl_token(int argc, char **argv);    /* token.c: offline token verify */
int nhictl_audit(int argc, char **argv);    /* audit.c: audit log verify */
int nhictl_airgap(int argc, char **argv);   /* airgap.c: air-gap posture check */

int nhictl_update(int argc, char **argv);   /* update.c: signed update packages create/sign/verify/apply/scan */
int nhictl_bundle(int argc, char **argv);   /* bundle.c: trust bundle create/sign/verify/fingerprint */
int nhictl_manifest(int argc, char **argv); /* manifest.c: model manifest sign/verify */
int nhictl_rotation(int argc, char **argv); /* rotation.c: cert-rotation package body */
int nhictl_key(int argc, char **argv);      /* key.c: a labelled P-256 key in a token, its public key */
/* key.c: print a key's public key (PEM); `cmd` names the command in messages. */
int nhictl_key_pubkey(const char *cmd, int argc, char **argv);

/*
 * update.c: `<cmd> sign` for every signed document (update package, bundle,
 * manifest): --token LABEL|URI --key LABEL --pin-file F [--module P] [-o OUT] FILE.
 * doc_type is an enum nhi_doc_type (server/update.h). Returns the exit status.
 */
int nhictl_doc_sign(int doc_type, const char *cmd, int argc, char **argv);
/* One action of a subcommand ("create", "verify"...): argv[0] is the action's name. */
struct nhictl_action {
	const char *name;
	int (*run)(int argc, char **argv);
};
/*
 * cli.c: run the action argv[1] names. No action: usage on stderr, 2; --help/-h:
 * usage on stdout, 0; an unknown one: "nhictl CMD: unknown action 'X'", usage, 2.
 */
int nhictl_dispatch(const char *cmd, const struct nhictl_action *actions, size_t n, void (*usage)(FILE *f), int argc,
		    char **argv);

/*
 * cli.c: option --opt of `nhictl cmd` as a strict decimal in [lo, hi] (no sign tricks,
 * no trailing bytes); otherwise the message names the option, the value and the range.
 */
bool nhictl_arg_ll(const char *cmd, const char *opt, const char *s, long long lo, long long hi, long long *out);

/*
 * bundle.c: trust bundle files given by hand (oldest first), checked as a rotation
 * chain from the bundle whose fingerprint is `pin` (64 lower-case hex digits, as
 * 'nhictl bundle fingerprint' prints it and the ceremony transcript records it), and
 * the last one unexpired at `now`. What 'bundle verify', 'manifest verify --bundle' and
 * 'update verify --bundle' trust: a bundle's own signatures prove nothing alone, since
 * anyone can sign one with their own keys. On failure *bad_path names the file at fault.
 */
struct nhi_bundle;
nhi_err nhictl_bundle_chain_load(char *const *paths, size_t n, const char *pin, int64_t now,
				 struct nhi_bundle **out, const char **bad_path) NHI_MUST_CHECK;

/* Print "nhictl <cmd>: <what>: <detail> [<error name>]" on stderr; returns 1. */
int nhictl_fail(const char *cmd, const char *what, nhi_err e);

#endif
