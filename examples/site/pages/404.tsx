export default function NotFound({ path }: { path: string }) {
  return (
    <>
      <title>Not found · bext example</title>
      <h1>Not found</h1>
      <p>Nothing lives at <code>{path}</code>.</p>
      <p><a href="/">Home</a></p>
    </>
  );
}
