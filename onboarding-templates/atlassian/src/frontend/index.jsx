// The app's admin page (Jira settings → Apps → Connect to credbroker). A site administrator
// types the connect code their platform team sent; the page hands it to the broker through
// Forge (invokeRemote: Forge signs the call with this site and the administrator's account).
// The broker binds the site to the tenant whose onboarding made the code. Nothing is stored
// here, and the code is not kept after it is sent.
import React, { useState } from 'react';
import ForgeReconciler, {
  Button,
  Heading,
  Label,
  SectionMessage,
  Stack,
  Text,
  Textfield,
} from '@forge/react';
import { invokeRemote } from '@forge/bridge';

// What the broker answers, in words (its `result`, or its error code).
const SAID = {
  bound: ['success', 'This site is now connected. You can close this page.'],
  kept: ['success', 'This site was already connected.'],
  captured: ['success', 'This site was already connected.'],
  rebound: ['success', 'This site was already connected.'],
  unclaimed: [
    'warning',
    'No onboarding expects this site. Ask your platform team to onboard it (they need its cloudId), then type the code they send.',
  ],
  ignored: ['warning', 'Nothing changed: this installation is not the one the broker holds.'],
  rate_limited: [
    'warning',
    'Too many tries from this site in the last minute. Wait a minute, then press Connect again.',
  ],
  callback_rejected: [
    'error',
    'This is not the code for this site. Check it with your platform team: a newer onboarding replaces the code.',
  ],
};

const App = () => {
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [said, setSaid] = useState(null);

  // What the broker answered, whether the bridge resolved with a non-2xx answer or
  // rejected with it: the page shows the broker's result or refusal either way.
  const show = (answer) => {
    const body = (answer && answer.body) || {};
    const key = body.result || (body.error && body.error.code);
    if (SAID[key]) {
      setSaid(SAID[key]);
    } else if (answer && answer.status) {
      setSaid(['error', `The broker answered ${answer.status}${key ? ` (${key})` : ''}.`]);
    } else {
      setSaid(['error', 'The broker could not be reached. Try again in a minute.']);
    }
    if (body.result) {
      setCode('');
    }
  };

  const send = async () => {
    setBusy(true);
    setSaid(null);
    try {
      show(
        await invokeRemote({
          path: '/connect',
          method: 'POST',
          body: { code: code.trim() },
        }),
      );
    } catch (e) {
      show(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Stack space="space.200">
      <Heading size="medium">Connect this site to credbroker</Heading>
      <Text>
        Your platform team sent you a connect code when they onboarded this site. Typing it
        here proves the site is yours; the app then hands its read-only token to your
        scanners only.
      </Text>
      <Label labelFor="connect-code">Connect code</Label>
      <Textfield
        id="connect-code"
        value={code}
        onChange={(e) => setCode(e.target.value)}
      />
      <Button appearance="primary" isDisabled={busy || code.trim() === ''} onClick={send}>
        Connect
      </Button>
      {said && (
        <SectionMessage appearance={said[0]}>
          <Text>{said[1]}</Text>
        </SectionMessage>
      )}
    </Stack>
  );
};

ForgeReconciler.render(
  <React.StrictMode>
    <App />
  </React.StrictMode>,
);
