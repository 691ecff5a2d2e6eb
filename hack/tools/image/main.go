// Command oci-image writes an image archive (the "docker save" layout that
// "ctr images import" and "docker load" read, with OCI media types) holding a
// single-layer image built from a layer tarball, using go-containerregistry
// for the image format. It is how the project builds its images where there
// is no Docker: hack/build-images.sh makes the layer with tar from a rootfs
// and calls this.
//
//	oci-image -layer rootfs.tar -tag ghcr.io/iptproxy/iptproxy:dev \
//	    -entrypoint /usr/local/bin/iptproxy -o iptproxy.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

// Set appends one value.
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// options are the command line.
type options struct {
	layer      string
	out        string
	tags       listFlag
	entrypoint listFlag
	cmd        listFlag
	env        listFlag
	workdir    string
	created    string
}

func main() {
	var o options
	flag.StringVar(&o.layer, "layer", "", "uncompressed tar of the image's filesystem (required)")
	flag.StringVar(&o.out, "o", "", "archive to write (required)")
	flag.Var(&o.tags, "tag", "image reference to tag the image with (repeatable, at least one)")
	flag.Var(&o.entrypoint, "entrypoint", "entrypoint argument (repeatable, in order)")
	flag.Var(&o.cmd, "cmd", "cmd argument (repeatable, in order)")
	flag.Var(&o.env, "env", "KEY=VALUE environment entry (repeatable)")
	flag.StringVar(&o.workdir, "workdir", "", "working directory")
	flag.StringVar(&o.created, "created", "", "creation time, RFC 3339 (default: the Unix epoch, for reproducible digests)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "oci-image: %v\n", err)
		os.Exit(1)
	}
}

// run builds the image and writes the archive.
func run(o options) error {
	if o.layer == "" || o.out == "" || len(o.tags) == 0 {
		return fmt.Errorf("-layer, -o and at least one -tag are required")
	}
	created := time.Unix(0, 0).UTC()
	if o.created != "" {
		t, err := time.Parse(time.RFC3339, o.created)
		if err != nil {
			return fmt.Errorf("parsing -created: %w", err)
		}
		created = t
	}
	layer, err := tarball.LayerFromFile(o.layer, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("reading layer %s: %w", o.layer, err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	if err != nil {
		return fmt.Errorf("adding layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Created = v1.Time{Time: created}
	cf.Config.Entrypoint = o.entrypoint
	cf.Config.Cmd = o.cmd
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, o.env...)
	cf.Config.WorkingDir = o.workdir
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("setting config: %w", err)
	}
	refs := make(map[name.Reference]v1.Image, len(o.tags))
	for _, t := range o.tags {
		ref, err := name.NewTag(t, name.WeakValidation)
		if err != nil {
			return fmt.Errorf("parsing tag %q: %w", t, err)
		}
		refs[ref] = img
	}
	if err := tarball.MultiRefWriteToFile(o.out, refs); err != nil {
		return fmt.Errorf("writing %s: %w", o.out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("computing digest: %w", err)
	}
	fmt.Printf("oci-image: %s %s -> %s\n", strings.Join(o.tags, " "), digest, o.out)
	return nil
}
