// A smoke test of the generated TypeScript client against a running gateway: sign up,
// type in the code the sign-up e-mail brought (one line on stdin), which opens the account
// and makes its first key, remove the background of one photo, check what comes back.
// tests/mesh/test_clients.py runs it against the embedded mesh, reading the code from its outbox:
//   CUTOUT_GATEWAY=127.0.0.1:50051 CUTOUT_CA_FILE=.data/pki/ca.pem CUTOUT_REGION=eu \
//   CUTOUT_EMAIL=me@example.com CUTOUT_PHOTO=photo.png CUTOUT_OUTPUT=out.png npm run smoke
import { readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline/promises";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Cutout, RemoveBackgroundRequestSchema } from "./src/gen/cutout/v1/cutout_pb.js";
import { OutputFormat, RemoveBackgroundOptionsSchema } from "./src/gen/cutout/v1/options_pb.js";

function need(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const transport = createGrpcTransport({
  baseUrl: `https://${need("CUTOUT_GATEWAY")}`,
  // The gateway speaks TLS 1.3 only, with a certificate from the cell's CA.
  nodeOptions: { ca: readFileSync(need("CUTOUT_CA_FILE")), minVersion: "TLSv1.3" },
});
const cutout = createClient(Cutout, transport);

const email = need("CUTOUT_EMAIL");
const password = "correct horse battery staple 42";
const answer = await cutout.signUp({ email, password, displayName: "TypeScript smoke", region: need("CUTOUT_REGION"), ageConfirmed: true });
if (!answer.verificationRequired) throw new Error("sign-up did not ask for the e-mailed code");
const stdin = createInterface({ input: process.stdin });
console.log("code?");
const code = (await stdin[Symbol.asyncIterator]().next()).value?.trim() ?? "";
stdin.close();
const { apiKey } = await cutout.verifySignUp({ email, password, code, keyName: "smoke" });
if (!apiKey.startsWith("ck_")) throw new Error("no API key came back");

const request = create(RemoveBackgroundRequestSchema, {
  image: readFileSync(need("CUTOUT_PHOTO")),
  options: create(RemoveBackgroundOptionsSchema, { format: OutputFormat.PNG }),
});
const response = await cutout.removeBackground(request, { headers: { "x-api-key": apiKey } });
const result = response.result;
if (!result || result.mediaType !== "image/png" || result.image.length === 0) {
  throw new Error(`unexpected result: ${result?.mediaType} ${result?.image.length} bytes`);
}
writeFileSync(need("CUTOUT_OUTPUT"), result.image);
console.log(
  JSON.stringify({
    width: result.width,
    height: result.height,
    model: result.model,
    foregroundFraction: result.foregroundFraction,
    creditsCharged: Number(response.creditsCharged),
  }),
);
