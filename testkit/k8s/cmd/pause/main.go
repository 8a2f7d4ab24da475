// Test-only: the pod sandbox's process for the test bed's real nodes (containerd's
// `sandbox_image`), since no registry is reachable to pull one. It holds the pod's
// namespaces and does nothing until it is asked to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
