/* Runs a program as a "child subreaper" (prctl PR_SET_CHILD_SUBREAPER, kept across exec):
 * processes orphaned below it (containerd's shims, a component whose launcher exited) are
 * re-parented to it instead of to PID 1, and it reaps them. scripts/node runs its namespace
 * holder this way, because PID 1 in some sandboxes reaps nobody and would leave every
 * stopped component behind as a zombie. */
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: subreaper PROGRAM [ARG...]\n");
        return 2;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        perror("prctl(PR_SET_CHILD_SUBREAPER)");
        return 1;
    }
    execvp(argv[1], argv + 1);
    perror(argv[1]);
    return 127;
}
