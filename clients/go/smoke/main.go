// Command smoke is a smoke test of the generated Go client against a running gateway: sign
// up, type in the code the sign-up e-mail brought (one line on stdin), which opens the
// account and makes its first key, remove the background of one photo, check that a PNG
// with a transparent background comes back. tests/mesh/test_clients.py builds and runs it
// against the embedded mesh, reading the code from its outbox:
//
//	CUTOUT_GATEWAY=127.0.0.1:50051 CUTOUT_CA_FILE=.data/pki/ca.pem CUTOUT_REGION=eu \
//	CUTOUT_EMAIL=me@example.com CUTOUT_PHOTO=photo.png CUTOUT_OUTPUT=out.png ./smoke
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"image/color"
	"image/png"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	cutoutv1 "example.com/cutout/clients/go/gen/cutout/v1"
)

func need(name string) string {
	value := os.Getenv(name)
	if value == "" {
		fail(fmt.Errorf("%s is not set", name))
	}
	return value
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "smoke:", err)
	os.Exit(1)
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ca, err := os.ReadFile(need("CUTOUT_CA_FILE"))
	if err != nil {
		fail(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		fail(fmt.Errorf("no certificate in %s", os.Getenv("CUTOUT_CA_FILE")))
	}
	// The gateway speaks TLS 1.3 only, with a certificate from the cell's CA.
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13})
	conn, err := grpc.DialContext(ctx, need("CUTOUT_GATEWAY"), grpc.WithTransportCredentials(creds), grpc.WithBlock())
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	cutout := cutoutv1.NewCutoutClient(conn)

	email := need("CUTOUT_EMAIL")
	password := "correct horse battery staple 42"
	answer, err := cutout.SignUp(ctx, &cutoutv1.SignUpRequest{
		Email: email, Password: password, DisplayName: "Go smoke", Region: need("CUTOUT_REGION"), AgeConfirmed: true,
	})
	if err != nil {
		fail(err)
	}
	if !answer.GetVerificationRequired() {
		fail(fmt.Errorf("sign-up did not ask for the e-mailed code"))
	}
	fmt.Println("code?")
	code, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		fail(err)
	}
	verified, err := cutout.VerifySignUp(ctx, &cutoutv1.VerifySignUpRequest{
		Email: email, Password: password, Code: strings.TrimSpace(code), KeyName: "smoke",
	})
	if err != nil {
		fail(err)
	}
	if !strings.HasPrefix(verified.GetApiKey(), "ck_") {
		fail(fmt.Errorf("no API key came back"))
	}

	photo, err := os.ReadFile(need("CUTOUT_PHOTO"))
	if err != nil {
		fail(err)
	}
	authed := metadata.AppendToOutgoingContext(ctx, "x-api-key", verified.GetApiKey())
	response, err := cutout.RemoveBackground(authed, &cutoutv1.RemoveBackgroundRequest{
		Image:   photo,
		Options: &cutoutv1.RemoveBackgroundOptions{Format: cutoutv1.OutputFormat_OUTPUT_FORMAT_PNG},
	})
	if err != nil {
		fail(err)
	}
	result := response.GetResult()
	if result.GetMediaType() != "image/png" || len(result.GetImage()) == 0 {
		fail(fmt.Errorf("unexpected result: %q, %d bytes", result.GetMediaType(), len(result.GetImage())))
	}
	transparent, opaque, err := alphaFractions(result.GetImage())
	if err != nil {
		fail(err)
	}
	// A cut-out, not an echo of the photo: some of it see-through, some of it solid.
	if transparent == 0 || opaque == 0 {
		fail(fmt.Errorf("no cut-out: %.3f transparent, %.3f opaque", transparent, opaque))
	}
	if err := os.WriteFile(need("CUTOUT_OUTPUT"), result.GetImage(), 0o600); err != nil {
		fail(err)
	}
	report, err := json.Marshal(map[string]any{
		"width":              result.GetWidth(),
		"height":             result.GetHeight(),
		"model":              result.GetModel(),
		"foregroundFraction": result.GetForegroundFraction(),
		"creditsCharged":     response.GetCreditsChargedDecimal(),
		"transparent":        transparent,
		"opaque":             opaque,
	})
	if err != nil {
		fail(err)
	}
	fmt.Println(string(report))
}

// alphaFractions decodes a PNG and returns the share of its pixels that are fully
// transparent and fully opaque; an image without an alpha channel is an error.
func alphaFractions(data []byte) (transparent, opaque float64, err error) {
	picture, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		return 0, 0, err
	}
	if model := picture.ColorModel(); model != color.NRGBAModel && model != color.NRGBA64Model {
		return 0, 0, fmt.Errorf("the PNG has no alpha channel (%T)", picture)
	}
	bounds := picture.Bounds()
	var seeThrough, solid int
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			switch _, _, _, alpha := picture.At(x, y).RGBA(); alpha {
			case 0:
				seeThrough++
			case 0xffff:
				solid++
			}
		}
	}
	pixels := float64(bounds.Dx() * bounds.Dy())
	return float64(seeThrough) / pixels, float64(solid) / pixels, nil
}
