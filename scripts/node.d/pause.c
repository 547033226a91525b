/* The pod sandbox's process ("pause"): holds the pod's namespaces and does nothing else
 * until it is told to stop. Built static by scripts/node-images, so its image is this one
 * file. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
