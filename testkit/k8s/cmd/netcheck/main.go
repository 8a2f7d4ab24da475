// Test-only: the real nodes' traffic check, in an image built here (no registry is
// reachable). `netcheck serve PORT` answers every TCP connection with one line naming the
// host; `netcheck dial HOST:PORT TRIES` connects until a server answers that line (exit 0)
// or TRIES attempts a second apart have failed (exit 1).
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "serve" {
		serve(os.Args[2])
	}
	if len(os.Args) == 4 && os.Args[1] == "dial" {
		tries, err := strconv.Atoi(os.Args[3])
		if err == nil {
			os.Exit(dial(os.Args[2], tries))
		}
	}
	fmt.Fprintln(os.Stderr, "usage: netcheck serve PORT | netcheck dial HOST:PORT TRIES")
	os.Exit(2)
}

func serve(port string) {
	listener, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	host, _ := os.Hostname()
	for {
		conn, err := listener.Accept()
		if err != nil {
			continue
		}
		fmt.Fprintf(conn, "netcheck %s\n", host)
		conn.Close()
	}
}

func dial(address string, tries int) int {
	for i := 0; i < tries; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		conn, err := net.DialTimeout("tcp", address, 2*time.Second)
		if err != nil {
			fmt.Println("fail:", err)
			continue
		}
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err == nil && strings.HasPrefix(line, "netcheck ") {
			fmt.Print("ok: ", line)
			return 0
		}
		fmt.Println("fail: no answer:", err)
	}
	return 1
}
