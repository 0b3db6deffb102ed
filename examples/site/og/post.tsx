/** The Open Graph card of a blog post: /api/og?template=post&title=…&subtitle=… (the og plugin renders it with satori). */
export default function PostCard({ title = 'Untitled', subtitle = '' }: Record<string, string>) {
  return (
    <div style={{ width: '100%', height: '100%', display: 'flex', flexDirection: 'column', justifyContent: 'flex-end', padding: 80, fontFamily: 'Inter', color: '#ffffff', background: 'linear-gradient(120deg, #1e3a8a 0%, #0ea5e9 100%)' }}>
      <div style={{ display: 'flex', fontSize: 30, fontWeight: 700, opacity: 0.8 }}>bext · blog</div>
      <div style={{ display: 'flex', fontSize: 72, fontWeight: 700, marginTop: 16 }}>{title}</div>
      {subtitle ? <div style={{ display: 'flex', fontSize: 34, marginTop: 20, opacity: 0.9 }}>{subtitle}</div> : null}
    </div>
  );
}
