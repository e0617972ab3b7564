/* The sandbox ("pause") process of every test Pod: holds the Pod's namespaces,
 * blocks until SIGTERM/SIGINT, reaps children (it is PID 1 of the sandbox).
 * Built static by hack/image/build.sh; containerd's sandbox_image points at it. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop}, chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGTERM, &term, NULL);
  sigaction(SIGINT, &term, NULL);
  sigaction(SIGCHLD, &chld, NULL);
  for (;;) pause();
}
