// Package badinput holds only tests: malformed pipelines files, queue messages, replay requests and Graph pages, each refused with a clear error and without touching stored data.
package badinput
