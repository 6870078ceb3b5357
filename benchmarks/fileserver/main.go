// A plain static file server (http.ServeFile: sendfile, Range, Content-Length), the
// same serving code Stash uses for /downloads, so the download benchmark measures
// the clients, not the server.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
)

func main() {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(listener.Addr().(*net.TCPAddr).Port)
	root := os.Args[1]
	http.Serve(listener, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, root+r.URL.Path)
	}))
}
