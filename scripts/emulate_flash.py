# Emulates flash_attn.cu lane by lane with the PTX fragment layouts of
# mma.m16n8k16 (row.col), to check the kernel's indexing on a CPU.
import numpy as np
rng=np.random.default_rng(0)

def A_from(lanes):  # lanes[l] = 4 regs, each (lo,hi)
    A=np.zeros((16,16))
    for l in range(32):
        g,t=l//4,l%4
        r=lanes[l]
        A[g,2*t],A[g,2*t+1]=r[0]; A[g+8,2*t],A[g+8,2*t+1]=r[1]
        A[g,2*t+8],A[g,2*t+9]=r[2]; A[g+8,2*t+8],A[g+8,2*t+9]=r[3]
    return A
def B_from(lanes):  # 2 regs
    B=np.zeros((16,8))
    for l in range(32):
        g,t=l//4,l%4
        r=lanes[l]
        B[2*t,g],B[2*t+1,g]=r[0]; B[2*t+8,g],B[2*t+9,g]=r[1]
    return B
def C_from(c):  # c[l] = 4 floats
    C=np.zeros((16,8))
    for l in range(32):
        g,t=l//4,l%4
        C[g,2*t],C[g,2*t+1],C[g+8,2*t],C[g+8,2*t+1]=c[l]
    return C
def C_to(C):
    return [[C[l//4,2*(l%4)],C[l//4,2*(l%4)+1],C[l//4+8,2*(l%4)],C[l//4+8,2*(l%4)+1]] for l in range(32)]
def mma(c,a,b):  # per-warp: c list of 32 x 4, a 32 x 4 pairs, b 32 x 2 pairs
    return C_to(A_from(a)@B_from(b)+C_from(c))

def kernel(q,k,v,Sq,Sk,D,BM=64,BN=64,WARPS=4):
    H=1; out=np.zeros((Sq,D))
    KS=D+8; VS=BN+8
    for bx in range((Sq+BM-1)//BM):
        ks=np.zeros(BN*KS); vt=np.zeros(D*VS)
        # per-warp, per-lane state
        st=[]
        for w in range(WARPS):
            row0=bx*BM+w*16
            def load2(base,row,rows,col):
                return (base[row,col],base[row,col+1]) if row<rows else (0.,0.)
            qf=[[ [load2(q,row0+l//4,Sq,kk*16+2*(l%4)), load2(q,row0+l//4+8,Sq,kk*16+2*(l%4)),
                   load2(q,row0+l//4,Sq,kk*16+2*(l%4)+8), load2(q,row0+l//4+8,Sq,kk*16+2*(l%4)+8)] for l in range(32)] for kk in range(D//16)]
            st.append(dict(row0=row0,qf=qf,o=[[[0.]*4 for l in range(32)] for j in range(D//8)],
                           m=[[-np.inf,-np.inf] for l in range(32)], l=[[0.,0.] for l in range(32)]))
        for n0 in range(0,Sk,BN):
            for i in range(BN*D//2):
                r=i//(D//2); c=(i%(D//2))*2
                kv=(k[n0+r,c],k[n0+r,c+1]) if n0+r<Sk else (0.,0.)
                vv=(v[n0+r,c],v[n0+r,c+1]) if n0+r<Sk else (0.,0.)
                ks[r*KS+c],ks[r*KS+c+1]=kv
                vt[c*VS+r]=vv[0]; vt[(c+1)*VS+r]=vv[1]
            for w in range(WARPS):
                S=st[w]
                s=[[[0.]*4 for l in range(32)] for j in range(BN//8)]
                for j in range(BN//8):
                    for kk in range(D//16):
                        bf=[]
                        for l in range(32):
                            g,t=l//4,l%4
                            base=(j*8+g)*KS+kk*16+2*t
                            bf.append([(ks[base],ks[base+1]),(ks[base+8],ks[base+9])])
                        s[j]=mma(s[j],[S['qf'][kk][l] for l in range(32)],bf)
                scale=1/np.sqrt(D)*np.log2(np.e)
                for l in range(32):
                    g,t=l//4,l%4
                    mx=[-np.inf,-np.inf]
                    for j in range(BN//8):
                        for e in range(4):
                            col=n0+j*8+2*t+(e&1)
                            x=s[j][l][e]*scale if col<Sk else -np.inf
                            s[j][l][e]=x; mx[e>>1]=max(mx[e>>1],x)
                    S.setdefault('mx',{})[l]=mx
                # quad reductions
                for l in range(32):
                    quad=[4*(l//4)+i for i in range(4)]
                    mxq=[max(S['mx'][x][r] for x in quad) for r in range(2)]
                    S.setdefault('mnew',{})[l]=[max(S['m'][l][r],mxq[r]) for r in range(2)]
                rs={}
                for l in range(32):
                    mnew=S['mnew'][l]; r2=[0.,0.]
                    for j in range(BN//8):
                        for e in range(4):
                            p=2**(s[j][l][e]-mnew[e>>1]); s[j][l][e]=p; r2[e>>1]+=p
                    rs[l]=r2
                for l in range(32):
                    quad=[4*(l//4)+i for i in range(4)]
                    mnew=S['mnew'][l]
                    alpha=[2**(S['m'][l][r]-mnew[r]) for r in range(2)]
                    S['l'][l]=[S['l'][l][r]*alpha[r]+sum(rs[x][r] for x in quad) for r in range(2)]
                    S.setdefault('alpha',{})[l]=alpha
                for l in range(32):
                    S['m'][l]=S['mnew'][l]
                    a=S['alpha'][l]
                    for j in range(D//8):
                        S['o'][j][l]=[S['o'][j][l][0]*a[0],S['o'][j][l][1]*a[0],S['o'][j][l][2]*a[1],S['o'][j][l][3]*a[1]]
                for kk in range(BN//16):
                    pa=[[(s[2*kk][l][0],s[2*kk][l][1]),(s[2*kk][l][2],s[2*kk][l][3]),(s[2*kk+1][l][0],s[2*kk+1][l][1]),(s[2*kk+1][l][2],s[2*kk+1][l][3])] for l in range(32)]
                    for j in range(D//8):
                        bf=[]
                        for l in range(32):
                            g,t=l//4,l%4
                            base=(j*8+g)*VS+kk*16+2*t
                            bf.append([(vt[base],vt[base+1]),(vt[base+8],vt[base+9])])
                        S['o'][j]=mma(S['o'][j],pa,bf)
        for w in range(WARPS):
            S=st[w]
            for l in range(32):
                g,t=l//4,l%4
                for r in range(2):
                    row=S['row0']+g+8*r
                    if row>=Sq: continue
                    inv=1/S['l'][l][r]
                    for j in range(D//8):
                        out[row,j*8+2*t]=S['o'][j][l][2*r]*inv
                        out[row,j*8+2*t+1]=S['o'][j][l][2*r+1]*inv
    return out

for (Sq,Sk,D) in [(70,90,64),(64,64,128),(20,130,64)]:
    q=rng.standard_normal((Sq,D)); k=rng.standard_normal((Sk,D)); v=rng.standard_normal((Sk,D))
    sc=q@k.T/np.sqrt(D); p=np.exp(sc-sc.max(1,keepdims=True)); p/=p.sum(1,keepdims=True); ref=p@v
    got=kernel(q,k,v,Sq,Sk,D)
    print(Sq,Sk,D,"max abs err",np.abs(got-ref).max())
